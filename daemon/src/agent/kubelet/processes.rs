//! How many processes each running container has, for the `pid.available`
//! eviction signal. CRI v1's container stats carry no process count, so
//! it is read where the kernel keeps it: the `pids.current` of the
//! container's cgroup, found through the cgroup of its init process
//! (`/proc/<pid>/cgroup`; the pid from the runtime), which works for
//! cgroup v1 and v2 and for either cgroup driver.

use super::listing::{LABEL_CONTAINER, LABEL_UID};
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use std::collections::HashMap;
use std::path::PathBuf;

/// (pod uid, container name) → tasks in its cgroup, for every running
/// container the kubelet started. A container whose count cannot be read
/// is left out (it counts as none).
pub async fn per_container(cri_: &Cri) -> HashMap<(String, String), u64> {
    let rt = &cri_;
    let running = cri::ContainerStateValue {
        state: cri::ContainerState::ContainerRunning as i32,
    };
    let req = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            state: Some(running),
            ..Default::default()
        }),
    };
    let list = match rt.list_containers(req).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e.message(), "cannot list running containers to count their processes");
            return HashMap::new();
        }
    };
    let mut out = HashMap::new();
    for c in list.containers {
        let (Some(uid), Some(name)) = (c.labels.get(LABEL_UID), c.labels.get(LABEL_CONTAINER))
        else {
            continue;
        };
        let pid = cri_.container_pid(&c.id).await;
        match pid.and_then(tasks_in_cgroup_of) {
            Some(n) => {
                out.insert((uid.clone(), name.clone()), n);
            }
            // Counted as none, so the ranking may not see it: say why.
            None => {
                tracing::info!(container = %c.id, pid = ?pid, "process count not readable (no pid from the runtime, or no pids.current in its cgroup)")
            }
        }
    }
    out
}

/// `pids.current` of the cgroup process `pid` is in: the v1 `pids`
/// hierarchy when there is one, else the v2 unified one.
fn tasks_in_cgroup_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    pids_current_paths(&text)
        .into_iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

/// Where `pids.current` may be for a process with this `/proc/<pid>/cgroup`,
/// in the order to try.
fn pids_current_paths(proc_cgroup: &str) -> Vec<PathBuf> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "pids") {
            v1.push(
                PathBuf::from("/sys/fs/cgroup/pids")
                    .join(rel)
                    .join("pids.current"),
            );
        } else if controllers.is_empty() {
            v2.push(
                PathBuf::from("/sys/fs/cgroup")
                    .join(rel)
                    .join("pids.current"),
            );
            v2.push(
                PathBuf::from("/sys/fs/cgroup/unified")
                    .join(rel)
                    .join("pids.current"),
            );
        }
    }
    v1.extend(v2);
    v1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_pids_hierarchy_before_the_unified_one() {
        let hybrid = "12:pids:/k8s.io/abc\n1:name=systemd:/k8s.io/abc\n0::/k8s.io/abc\n";
        assert_eq!(
            pids_current_paths(hybrid),
            [
                PathBuf::from("/sys/fs/cgroup/pids/k8s.io/abc/pids.current"),
                PathBuf::from("/sys/fs/cgroup/k8s.io/abc/pids.current"),
                PathBuf::from("/sys/fs/cgroup/unified/k8s.io/abc/pids.current"),
            ]
        );
        let v2 = "0::/system.slice/cri-containerd-abc.scope\n";
        assert_eq!(
            pids_current_paths(v2)[0],
            PathBuf::from("/sys/fs/cgroup/system.slice/cri-containerd-abc.scope/pids.current")
        );
        assert!(pids_current_paths("garbage").is_empty());
    }
}
