//! The pod status kubectl reads, from what one sync found: phase,
//! conditions, and each container's state, lastState, ready, started and
//! restart count, as upstream's kubelet reports them.

use super::listing::Seen;
use super::node::NodeCtx;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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

/// What one sync found, from which the pod's status is written.
pub(super) struct Found<'a> {
    /// The latest attempt of each container the runtime has.
    pub seen: &'a BTreeMap<String, Seen>,
    /// Containers not running, and why: `(reason, message)`.
    pub waiting: &'a HashMap<String, (String, String)>,
    /// container name → (started, ready) from its probes.
    pub verdicts: &'a HashMap<String, (bool, bool)>,
    /// Whether every init container has succeeded.
    pub initialized: bool,
    pub pod_ip: &'a str,
    pub start_time: Option<&'a str>,
    /// The pod's restartPolicy (upstream's default: Always).
    pub policy: &'a str,
}

/// The status of `pod` on `node` from what a sync found.
pub(super) fn status(pod: &Pod, node: &NodeCtx, found: &Found) -> Value {
    let Found {
        seen,
        waiting,
        verdicts,
        initialized,
        pod_ip,
        start_time,
        policy,
    } = *found;
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = &spec.containers;
    let statuses = container_statuses(containers, seen, waiting, verdicts);
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
    let now = crate::datastore::objects::now_rfc3339();
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
        "startTime": start_time,
        "containerStatuses": statuses,
    });
    if !inits.is_empty() {
        out["initContainerStatuses"] = json!(inits);
    }
    let ephemeral: Vec<Container> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(super::containers::ephemeral)
        .collect();
    if !ephemeral.is_empty() {
        let mut statuses = container_statuses(&ephemeral, seen, waiting, &HashMap::new());
        // Not part of the pod's readiness: upstream reports them not ready.
        for s in &mut statuses {
            s["ready"] = json!(false);
        }
        out["ephemeralContainerStatuses"] = json!(statuses);
    }
    if !pod_ip.is_empty() {
        out["podIP"] = json!(pod_ip);
        out["podIPs"] = json!([{"ip": pod_ip}]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
    const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

    fn node() -> NodeCtx {
        NodeCtx {
            name: "n1".into(),
            ip: "10.77.0.2".into(),
            events: crate::agent::kubelet::events::Events::discard("n1"),
            allocatable: Default::default(),
            log_root: "/nonexistent/logs".into(),
            pods_root: "/nonexistent/pods".into(),
        }
    }

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                "initContainers": [{"name": "i", "image": "busybox"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn attempt(id: &str, state: i32, exit: i32, attempt: u32) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: id.into(),
            state,
            exit_code: exit,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == EXITED {
                1_700_000_005_000_000_000
            } else {
                0
            },
            image_ref: "sha256:abc".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt,
            }),
            ..Default::default()
        }
    }

    fn seen(
        list: Vec<(&str, cri::ContainerStatus, Option<cri::ContainerStatus>)>,
    ) -> BTreeMap<String, Seen> {
        list.into_iter()
            .map(|(n, status, previous)| (n.to_string(), Seen { status, previous }))
            .collect()
    }

    fn status_with(
        pod: &Pod,
        seen: &BTreeMap<String, Seen>,
        waiting: &HashMap<String, (String, String)>,
        verdicts: &HashMap<String, (bool, bool)>,
        initialized: bool,
        policy: &str,
    ) -> Value {
        let found = Found {
            seen,
            waiting,
            verdicts,
            initialized,
            pod_ip: "10.42.0.5",
            start_time: Some("2026-12-02T10:00:00Z"),
            policy,
        };
        status(pod, &node(), &found)
    }

    fn condition<'a>(s: &'a Value, t: &str) -> &'a Value {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap_or_else(|| panic!("no {t} condition in {s}"))
    }

    #[test]
    fn a_container_that_ended_sets_the_phase_by_restart_policy() {
        let p = pod(json!({}));
        let (no_wait, no_verdicts) = (HashMap::new(), HashMap::new());
        let failed = seen(vec![
            ("i", attempt("i0", EXITED, 0, 0), None),
            ("c", attempt("c0", EXITED, 3, 0), None),
        ]);
        let ok = seen(vec![
            ("i", attempt("i0", EXITED, 0, 0), None),
            ("c", attempt("c0", EXITED, 0, 0), None),
        ]);
        let phase = |seen: &BTreeMap<String, Seen>, policy: &str| {
            status_with(&p, seen, &no_wait, &no_verdicts, true, policy)["phase"].clone()
        };
        assert_eq!(phase(&failed, "Never"), "Failed");
        assert_eq!(phase(&ok, "Never"), "Succeeded");
        assert_eq!(
            phase(&failed, "OnFailure"),
            "Running",
            "it will be restarted"
        );
        assert_eq!(phase(&ok, "OnFailure"), "Succeeded");
        assert_eq!(phase(&ok, "Always"), "Running");
        let s = status_with(&p, &failed, &no_wait, &no_verdicts, true, "Never");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"]["terminated"]["exitCode"], 3);
        assert_eq!(c["state"]["terminated"]["reason"], "Error");
        assert_eq!(c["containerID"], "containerd://c0");
        assert_eq!(c["ready"], false);
        let s = status_with(&p, &ok, &no_wait, &no_verdicts, true, "Never");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }

    #[test]
    fn a_finished_phase_is_final() {
        let p = pod(json!({"phase": "Succeeded"}));
        let (no_wait, no_verdicts) = (HashMap::new(), HashMap::new());
        let running = seen(vec![("c", attempt("c1", RUNNING, 0, 1), None)]);
        let s = status_with(&p, &running, &no_wait, &no_verdicts, true, "Always");
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(
            condition(&s, "Ready")["status"],
            "False",
            "a finished pod is not Ready, though a container runs"
        );
    }

    #[test]
    fn pending_until_the_init_containers_have_run() {
        let p = pod(json!({}));
        let (no_wait, no_verdicts) = (HashMap::new(), HashMap::new());
        let s = status_with(
            &p,
            &seen(vec![("i", attempt("i0", RUNNING, 0, 0), None)]),
            &no_wait,
            &no_verdicts,
            false,
            "Always",
        );
        assert_eq!(s["phase"], "Pending");
        assert_eq!(condition(&s, "Initialized")["status"], "False");
        assert_eq!(condition(&s, "Ready")["status"], "False");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["running"]["startedAt"],
            "2023-11-14T22:13:20Z"
        );
        // A container still running from before (its sandbox is being
        // replaced and the inits run again) does not make the pod Running.
        let s = status_with(
            &p,
            &seen(vec![
                ("i", attempt("i1", RUNNING, 0, 1), None),
                ("c", attempt("c0", RUNNING, 0, 0), None),
            ]),
            &no_wait,
            &no_verdicts,
            false,
            "Always",
        );
        assert_eq!(s["phase"], "Pending");
        assert_eq!(condition(&s, "Ready")["status"], "False");
    }

    #[test]
    fn probes_decide_ready_and_started_of_a_running_container() {
        let p = pod(json!({}));
        let (no_wait, no_verdicts) = (HashMap::new(), HashMap::new());
        let running = seen(vec![
            ("i", attempt("i0", EXITED, 0, 0), None),
            ("c", attempt("c0", RUNNING, 0, 0), None),
        ]);
        let s = status_with(&p, &running, &no_wait, &no_verdicts, true, "Always");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert_eq!(condition(&s, "Ready")["status"], "True");
        assert_eq!(condition(&s, "ContainersReady")["status"], "True");
        let verdicts = HashMap::from([("c".to_string(), (true, false))]);
        let s = status_with(&p, &running, &no_wait, &verdicts, true, "Always");
        assert_eq!(s["containerStatuses"][0]["ready"], false);
        assert_eq!(s["containerStatuses"][0]["started"], true);
        assert_eq!(condition(&s, "Ready")["status"], "False");
        let verdicts = HashMap::from([("c".to_string(), (false, false))]);
        let s = status_with(&p, &running, &no_wait, &verdicts, true, "Always");
        assert_eq!(s["containerStatuses"][0]["started"], false);
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["hostIP"], "10.77.0.2");
    }

    #[test]
    fn a_crash_loop_shows_waiting_with_the_last_attempt_and_its_count() {
        let p = pod(json!({}));
        let no_verdicts = HashMap::new();
        let dead = seen(vec![
            ("i", attempt("i0", EXITED, 0, 0), None),
            (
                "c",
                attempt("c2", EXITED, 1, 2),
                Some(attempt("c1", EXITED, 1, 1)),
            ),
        ]);
        let waiting = HashMap::from([(
            "c".to_string(),
            (
                "CrashLoopBackOff".to_string(),
                "back-off 20s restarting failed container=c pod=p".to_string(),
            ),
        )]);
        let s = status_with(&p, &dead, &waiting, &no_verdicts, true, "Always");
        let c = &s["containerStatuses"][0];
        assert_eq!(s["phase"], "Running");
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(
            c["lastState"]["terminated"]["containerID"],
            "containerd://c2"
        );
        assert_eq!(c["restartCount"], 2);
        assert_eq!(c["ready"], false);
    }

    #[test]
    fn conditions_keep_their_transition_time_and_others_are_carried_over() {
        let p = pod(json!({"conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                "lastTransitionTime": "2026-01-02T00:00:00Z"},
        ]}));
        let (no_wait, no_verdicts) = (HashMap::new(), HashMap::new());
        let running = seen(vec![
            ("i", attempt("i0", EXITED, 0, 0), None),
            ("c", attempt("c0", RUNNING, 0, 0), None),
        ]);
        let s = status_with(&p, &running, &no_wait, &no_verdicts, true, "Always");
        assert_eq!(
            condition(&s, "Initialized")["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        // Ready turned True now: a new transition time.
        assert_ne!(
            condition(&s, "Ready")["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            condition(&s, "DisruptionTarget")["reason"],
            "EvictionByEvictionAPI"
        );
    }
}
