//! The part of the Node's status the kubelet owns, as upstream's does:
//! capacity and allocatable (capacity minus `kube-reserved`,
//! `system-reserved` and the hard eviction thresholds), the
//! MemoryPressure, DiskPressure and PIDPressure conditions measured
//! against those thresholds, the images the runtime holds, and the kubelet
//! endpoint. Ready stays with the server, which sees the tunnel come and go
//! (and the runtime's health the agent reports through it).
//!
//! Written with a strategic merge patch (conditions merge by type, so the
//! server's Ready is left alone) when something changed, and at least every
//! five minutes (upstream's `nodeStatusReportFrequency`) so the heartbeat
//! times move.

use super::events::{Events, Normal};
use super::node::Allocatable;
use super::settings::{Settings, Threshold};
use crate::agent::apiclient::Api;
use crate::agent::runtime::cri::Cri;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Upstream's `nodeStatusMaxImages`.
const MAX_IMAGES: usize = 50;
/// Upstream's `nodeStatusReportFrequency`.
const REPORT_EVERY: Duration = Duration::from_secs(300);
/// The kubelet's port, reported where `kubectl describe node` shows it
/// (logs and exec reach the node through the tunnel, as in K3s).
pub const KUBELET_PORT: u16 = 10250;

/// What the host has and has left, measured now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub cpus: u64,
    pub memory_total: u64,
    pub memory_available: u64,
    pub fs_total: u64,
    pub fs_available: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub pid_max: u64,
    pub pids_used: u64,
}

fn meminfo(key: &str, text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Space and inodes of one filesystem.
pub struct FsStats {
    pub total: u64,
    pub available: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// statvfs of the filesystem holding `path`; `None` if it cannot be read.
pub fn fs_stats(path: &Path) -> Option<FsStats> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a
    // NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some(FsStats {
        total: st.f_blocks as u64 * frsize,
        available: st.f_bavail as u64 * frsize,
        inodes_total: st.f_files as u64,
        inodes_free: st.f_ffree as u64,
    })
}

/// Measure the host; `fs` is a path on the filesystem pods and images use.
pub fn measure(fs: &Path) -> Measured {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut m = Measured {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        memory_total: meminfo("MemTotal", &mem).unwrap_or(0),
        memory_available: meminfo("MemAvailable", &mem).unwrap_or(0),
        ..Default::default()
    };
    if let Some(f) = fs_stats(fs) {
        m.fs_total = f.total;
        m.fs_available = f.available;
        m.inodes_total = f.inodes_total;
        m.inodes_free = f.inodes_free;
    }
    m.pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // /proc/loadavg's fourth field: running/total tasks.
    m.pids_used = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok())
        .unwrap_or(0);
    m
}

fn under(available: u64, total: u64, t: Option<Threshold>) -> bool {
    t.is_some_and(|t| total > 0 && available < t.of(total))
}

/// One pressure condition: type, whether it holds, upstream's reasons and messages.
fn condition(kind: &str, pressure: bool) -> (String, bool, &'static str, &'static str) {
    let (reason, message) = match (kind, pressure) {
        ("MemoryPressure", false) => (
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        ("MemoryPressure", true) => (
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        ),
        ("DiskPressure", false) => ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("DiskPressure", true) => ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        (_, false) => (
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (_, true) => (
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        ),
    };
    (kind.to_string(), pressure, reason, message)
}

/// The pressure conditions for `m` under `s`'s thresholds.
pub fn pressures(m: &Measured, s: &Settings) -> Vec<(String, bool, &'static str, &'static str)> {
    let e = &s.eviction;
    let memory = under(m.memory_available, m.memory_total, e.memory_available);
    let disk = under(m.fs_available, m.fs_total, e.nodefs_available)
        || under(m.inodes_free, m.inodes_total, e.nodefs_inodes_free);
    let pid = under(
        m.pid_max.saturating_sub(m.pids_used),
        m.pid_max,
        e.pid_available,
    );
    vec![
        condition("MemoryPressure", memory),
        condition("DiskPressure", disk),
        condition("PIDPressure", pid),
    ]
}

fn kib(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn cpu(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// Allocatable, as upstream computes it: capacity less what is reserved
/// and the hard eviction thresholds.
pub fn allocatable(m: &Measured, s: &Settings) -> Allocatable {
    let r = &s.reserved;
    let e = &s.eviction;
    let evict = |t: Option<Threshold>, total: u64| t.map(|t| t.of(total)).unwrap_or(0);
    Allocatable {
        cpu_milli: (m.cpus * 1000).saturating_sub(r.cpu_milli) as i128,
        memory: m
            .memory_total
            .saturating_sub(r.memory)
            .saturating_sub(evict(e.memory_available, m.memory_total)) as i128,
        ephemeral_storage: m
            .fs_total
            .saturating_sub(r.ephemeral_storage)
            .saturating_sub(evict(e.nodefs_available, m.fs_total))
            as i128,
    }
}

/// Capacity and allocatable as the Node's status shows them.
pub fn resources(m: &Measured, s: &Settings) -> (Value, Value) {
    let capacity = json!({
        "cpu": cpu(m.cpus * 1000),
        "memory": kib(m.memory_total),
        "ephemeral-storage": kib(m.fs_total),
        "pods": s.max_pods.to_string(),
    });
    let a = allocatable(m, s);
    let allocatable = json!({
        "cpu": cpu(a.cpu_milli as u64),
        "memory": kib(a.memory as u64),
        "ephemeral-storage": kib(a.ephemeral_storage as u64),
        "pods": s.max_pods.to_string(),
    });
    (capacity, allocatable)
}

async fn images(cri_: &Cri) -> Vec<Value> {
    let Ok(list) = cri_
        .list_images(k8s_cri::v1::ListImagesRequest { filter: None })
        .await
    else {
        return Vec::new();
    };
    let mut items: Vec<(u64, Vec<String>)> = list
        .images
        .into_iter()
        .map(|i| {
            let mut names = i.repo_digests;
            names.extend(i.repo_tags);
            (i.size, names)
        })
        .filter(|(_, n)| !n.is_empty())
        .collect();
    // Upstream lists the largest first.
    items.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    items
        .into_iter()
        .take(MAX_IMAGES)
        .map(|(size, names)| json!({"names": names, "sizeBytes": size}))
        .collect()
}

/// The fields of a Node's `status` the kubelet writes, without times, in
/// the form `run` builds them.
fn owned_part(status: &Value) -> Value {
    let conditions: Vec<Value> = ["MemoryPressure", "DiskPressure", "PIDPressure"]
        .iter()
        .filter_map(|kind| {
            let c = status["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == *kind)?;
            Some(json!({"type": c["type"], "status": c["status"], "reason": c["reason"], "message": c["message"]}))
        })
        .collect();
    json!({
        "capacity": status["capacity"],
        "allocatable": status["allocatable"],
        "conditions": conditions,
        "images": status.get("images").cloned().unwrap_or_else(|| json!([])),
        "daemonEndpoints": status["daemonEndpoints"],
    })
}

/// When each pressure condition's signal was last seen under its
/// threshold: the condition stays True for the transition period after.
#[derive(Default)]
pub struct Observed(std::sync::Mutex<std::collections::HashMap<String, Instant>>);

impl Observed {
    pub fn saw(&self, condition: &str) {
        self.0
            .lock()
            .expect("observed")
            .insert(condition.to_string(), Instant::now());
    }

    pub fn within(&self, condition: &str, period: Duration) -> bool {
        self.0
            .lock()
            .expect("observed")
            .get(condition)
            .is_some_and(|t| t.elapsed() < period)
    }
}

/// What the kubelet last saw of its Node's Ready condition and
/// schedulability, to record their changes as upstream's kubelet does
/// (`NodeReady`, `NodeNotReady`, `NodeSchedulable`, `NodeNotSchedulable`).
#[derive(Default)]
struct Seen {
    ready: Option<bool>,
    schedulable: Option<bool>,
}

impl Seen {
    fn observe(&mut self, node: &Value, events: &Events) {
        let ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"] == "True");
        if let Some(r) = ready {
            // A transition only: the first look records nothing.
            if self.ready.is_some_and(|was| was != r) {
                events.node_status(Normal, if r { "NodeReady" } else { "NodeNotReady" });
            }
            self.ready = Some(r);
        }
        let schedulable = node.pointer("/spec/unschedulable") != Some(&Value::Bool(true));
        if self.schedulable.is_some_and(|was| was != schedulable) {
            let what = if schedulable {
                "NodeSchedulable"
            } else {
                "NodeNotSchedulable"
            };
            events.node_status(Normal, what);
        }
        self.schedulable = Some(schedulable);
    }
}

/// `KubeletHasSufficientMemory` → `NodeHasSufficientMemory`: the event
/// upstream records when a pressure condition is set or changes.
fn condition_event(reason: &str) -> String {
    reason.replacen("Kubelet", "Node", 1)
}

/// The events of a kubelet's start, as upstream's: `Starting`,
/// `NodeAllocatableEnforced`, and `Rebooted` when the host's boot id is
/// not the one the kubelet last ran under (kept in `<agent_dir>/boot_id`).
pub fn started(events: &Events, agent_dir: &Path) {
    events.node(Normal, "Starting", "Starting kubelet.");
    events.node(
        Normal,
        "NodeAllocatableEnforced",
        "Updated Node Allocatable limit across pods",
    );
    let Ok(boot) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        return;
    };
    let boot = boot.trim();
    let file = agent_dir.join("boot_id");
    let before = std::fs::read_to_string(&file).unwrap_or_default();
    if !before.trim().is_empty() && before.trim() != boot {
        let m = format!(
            "Node {} has been rebooted, boot id: {boot}",
            events.node_name()
        );
        events.node(super::events::Warning, "Rebooted", m);
    }
    if before.trim() != boot {
        if let Err(e) = crate::host::fsutil::write_atomic(&file, boot.as_bytes(), 0o644) {
            tracing::debug!(file = %file.display(), error = %e, "boot id not kept");
        }
    }
}

/// Keep this node's status up to date until `cancel`.
pub async fn run(
    api: Api,
    cri_: Cri,
    events: Events,
    fs: PathBuf,
    settings: Settings,
    observed: std::sync::Arc<Observed>,
    cancel: CancellationToken,
) {
    let node = events.node_name().to_string();
    let path = format!("/api/v1/nodes/{node}/status");
    // When the status was last written, and each condition's last transition.
    let mut sent_at = Instant::now();
    let mut transitions: std::collections::HashMap<String, (bool, String)> = Default::default();
    let mut seen = Seen::default();
    loop {
        let m = measure(&fs);
        let (capacity, allocatable) = resources(&m, &settings);
        let now = crate::datastore::objects::now_rfc3339();
        // A pressure seen here or by the eviction loop holds for the
        // transition period.
        let conds: Vec<_> = pressures(&m, &settings)
            .into_iter()
            .map(|(kind, p, ..)| {
                if p {
                    observed.saw(&kind);
                }
                let p = p || observed.within(&kind, settings.pressure_transition_period);
                condition(&kind, p)
            })
            .collect();
        for (kind, p, reason, _) in &conds {
            match transitions.get_mut(kind) {
                None => {
                    transitions.insert(kind.clone(), (*p, now.clone()));
                    events.node_status(Normal, &condition_event(reason));
                }
                Some(entry) if entry.0 != *p => {
                    tracing::warn!(node = %node, condition = %kind, reason, "node condition changed");
                    *entry = (*p, now.clone());
                    events.node_status(Normal, &condition_event(reason));
                }
                Some(_) => {}
            }
        }
        let content = json!({
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conds.iter().map(|(k, p, r, msg)| json!({
                "type": k, "status": if *p { "True" } else { "False" }, "reason": r, "message": msg,
            })).collect::<Vec<_>>(),
            "images": images(&cri_).await,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        });
        // What the Node says now: the server marks conditions Unknown when
        // the node goes silent, and those must be put right at once.
        let current = api
            .get(&format!("/api/v1/nodes/{node}?resourceVersion=0"))
            .await
            .ok()
            .map(|n| {
                seen.observe(&n, &events);
                owned_part(&n["status"])
            });
        if current.as_ref() != Some(&content) || sent_at.elapsed() >= REPORT_EVERY {
            let mut status = content.clone();
            for c in status["conditions"].as_array_mut().into_iter().flatten() {
                let kind = c["type"].as_str().unwrap_or_default().to_string();
                c["lastHeartbeatTime"] = json!(now);
                c["lastTransitionTime"] = json!(transitions[&kind].1);
            }
            match api
                .patch(
                    &path,
                    "application/strategic-merge-patch+json",
                    &json!({ "status": status }),
                )
                .await
            {
                Ok(()) => sent_at = Instant::now(),
                Err(e) => tracing::debug!(error = %e, "kubelet: node status not written; retrying"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(settings.status_update_frequency) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::kubelet::settings::parse;

    fn host() -> Measured {
        Measured {
            cpus: 2,
            memory_total: 4 << 30,
            memory_available: 3 << 30,
            fs_total: 100 << 30,
            fs_available: 50 << 30,
            inodes_total: 1000,
            inodes_free: 900,
            pid_max: 4_194_304,
            pids_used: 300,
        }
    }

    #[test]
    fn allocatable_is_capacity_minus_reserved_and_eviction() {
        let s = parse(&[
            "kube-reserved=cpu=500m,memory=1Gi".into(),
            "max-pods=50".into(),
        ])
        .unwrap();
        let (cap, alloc) = resources(&host(), &s);
        assert_eq!(cap["cpu"], "2");
        assert_eq!(cap["memory"], "4194304Ki");
        assert_eq!(cap["pods"], "50");
        assert_eq!(alloc["cpu"], "1500m");
        // 4Gi - 1Gi reserved - 100Mi eviction.
        assert_eq!(alloc["memory"], format!("{}Ki", (3 << 20) - 100 * 1024));
        // 100Gi less 10% for nodefs.available.
        assert_eq!(alloc["ephemeral-storage"], format!("{}Ki", 90 << 20));
    }

    #[test]
    fn pressure_follows_the_thresholds() {
        let s = Settings::default();
        let all_clear = pressures(&host(), &s);
        assert!(all_clear.iter().all(|c| !c.1), "{all_clear:?}");
        assert_eq!(all_clear[0].2, "KubeletHasSufficientMemory");
        let mut low = host();
        low.memory_available = 50 << 20;
        low.inodes_free = 10;
        let p = pressures(&low, &s);
        assert_eq!((p[0].1, p[0].2), (true, "KubeletHasInsufficientMemory"));
        assert_eq!((p[1].1, p[1].2), (true, "KubeletHasDiskPressure"));
        assert!(!p[2].1);
        let pid = parse(&["eviction-hard=pid.available<100%".into()]).unwrap();
        assert_eq!(pressures(&host(), &pid)[2].2, "KubeletHasInsufficientPID");
    }
}
