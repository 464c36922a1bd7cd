//! The kubelet says what it does: `kubectl describe pod` and `kubectl get
//! events` show upstream's Events (reason, type and wording) for images,
//! containers, probes, volumes and the node, recorded as the node; and
//! what a pod sees of itself through the downward API. Needs root
//! (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/library/busybox:test";

/// The events about `name` (a pod, or the node), oldest first.
fn events_of(k: &Kubectl, ns: &str, name: &str) -> Vec<Value> {
    let out = k.ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Wait until an event about `name` has `reason` and a message `m` accepts.
fn wait_event(k: &Kubectl, ns: &str, name: &str, reason: &str, m: impl Fn(&str) -> bool) -> Value {
    wait_for(Duration::from_secs(60), || {
        events_of(k, ns, name)
            .into_iter()
            .find(|e| e["reason"] == reason && m(e["message"].as_str().unwrap_or("")))
    })
    .unwrap_or_else(|| {
        panic!(
            "no {reason} event about {name}: {:#?}",
            events_of(k, ns, name)
                .iter()
                .map(|e| format!("{} {} {}", e["type"], e["reason"], e["message"]))
                .collect::<Vec<_>>()
        )
    })
}

fn pod(name: &str, spec: Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}).to_string()
}

fn container(command: &str) -> Value {
    json!({"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", command]})
}

#[test]
fn the_kubelet_records_upstreams_events_as_the_node() {
    let t = tempdir();
    let dir = t.path().join("s");
    let (server, _containers, k) = ready_node(&dir, &["--cluster-cidr", "10.69.0.0/16"]);

    // The node's own: the kubelet started, its conditions were set.
    for (reason, message) in [
        ("Starting", "Starting kubelet.".to_string()),
        (
            "NodeHasSufficientMemory",
            "Node server-0 status is now: NodeHasSufficientMemory".into(),
        ),
        (
            "NodeHasSufficientPID",
            "Node server-0 status is now: NodeHasSufficientPID".into(),
        ),
        (
            "NodeAllocatableEnforced",
            "Updated Node Allocatable limit across pods".into(),
        ),
    ] {
        let e = wait_event(&k, "default", "server-0", reason, |m| m == message);
        assert_eq!(e["type"], "Normal", "{e}");
        assert_eq!(e["source"]["component"], "kubelet", "{e}");
        assert_eq!(e["source"]["host"], "server-0", "{e}");
        assert_eq!(e["reportingComponent"], "kubelet", "{e}");
        assert_eq!(e["reportingInstance"], "server-0", "{e}");
        assert_eq!(e["involvedObject"]["kind"], "Node", "{e}");
    }
    // Cordoned, then uncordoned: the kubelet notices both.
    k.ok(&["cordon", "server-0"]);
    wait_event(&k, "default", "server-0", "NodeNotSchedulable", |m| {
        m == "Node server-0 status is now: NodeNotSchedulable"
    });
    k.ok(&["uncordon", "server-0"]);
    wait_event(&k, "default", "server-0", "NodeSchedulable", |_| true);

    // A container that starts, with the downward API's resource values.
    let mut ok = container("echo limit=$MEM_MI cpu=$CPU_M file=$(cat /info/cpu); exec sleep 3600");
    ok["resources"] = json!({"limits": {"cpu": "500m", "memory": "64Mi"}});
    ok["env"] = json!([
        {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}]);
    ok["volumeMounts"] = json!([{"name": "info", "mountPath": "/info"}]);
    let spec = json!({"terminationGracePeriodSeconds": 1, "containers": [ok],
        "volumes": [{"name": "info", "downwardAPI": {"items": [{"path": "cpu",
            "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}}]}}]});
    k.ok_stdin(&["apply", "-f", "-"], &pod("ok", spec));
    // A container that exits at once, restarted at once the first time.
    let crash = json!({"terminationGracePeriodSeconds": 1, "containers": [container("exit 1")]});
    k.ok_stdin(&["apply", "-f", "-"], &pod("crash", crash));
    let created = Instant::now();
    // A secret that does not exist, an image that is not there.
    let mut with_secret = container("sleep 3600");
    with_secret["volumeMounts"] = json!([{"name": "s", "mountPath": "/s"}]);
    let mount = json!({"containers": [with_secret],
        "volumes": [{"name": "s", "secret": {"secretName": "s1"}}]});
    k.ok_stdin(&["apply", "-f", "-"], &pod("mount", mount));
    let mut never = container("true");
    never["image"] = json!("docker.io/library/nothing:here");
    k.ok_stdin(
        &["apply", "-f", "-"],
        &pod("never", json!({"containers": [never]})),
    );
    // A liveness probe that fails with output.
    let mut sick = container("exec sleep 3600");
    sick["livenessProbe"] = json!({"exec": {"command": ["sh", "-c", "echo not feeling well; exit 1"]},
        "periodSeconds": 1, "failureThreshold": 2,
        // Under load a 1 s timeout gives a second, "timed out" event.
        "timeoutSeconds": 10});
    k.ok_stdin(
        &["apply", "-f", "-"],
        &pod(
            "sick",
            json!({"terminationGracePeriodSeconds": 1, "containers": [sick]}),
        ),
    );

    wait_ready(&k, &server, "ok");
    let present = format!("Container image \"{IMAGE}\" already present on machine");
    let e = wait_event(&k, "default", "ok", "Pulled", |m| m == present);
    assert_eq!(
        e["involvedObject"]["fieldPath"], "spec.containers{c}",
        "{e}"
    );
    wait_event(&k, "default", "ok", "Created", |m| {
        m == "Created container: c"
    });
    wait_event(&k, "default", "ok", "Started", |m| {
        m == "Started container c"
    });
    // (`kubectl logs` is not served yet: the CRI log.)
    let uid = k.ok(&["get", "pod", "ok", "-o", "jsonpath={.metadata.uid}"]);
    let file = format!("/var/log/pods/default_ok_{uid}/c/0.log");
    let log = wait_for(Duration::from_secs(20), || {
        let l = std::fs::read_to_string(&file).ok()?;
        l.contains("limit=").then_some(l)
    })
    .unwrap_or_else(|| panic!("nothing in {file}"));
    assert!(log.contains("limit=64 cpu=500 file=500"), "{log}");

    // The first crash is restarted at once: RESTARTS 1 long before the
    // 10 s back-off, then CrashLoopBackOff with upstream's events.
    let restarted = wait_for(Duration::from_secs(30), || {
        let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "crash", "-o", "json"])).unwrap();
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1)
            .then(|| created.elapsed())
    })
    .expect("the crashing container was never restarted");
    assert!(
        restarted < Duration::from_secs(9),
        "first restart after {restarted:?}"
    );
    let e = wait_event(&k, "default", "crash", "BackOff", |m| {
        m.starts_with("Back-off restarting failed container c in pod crash_default(")
    });
    assert_eq!(e["type"], "Warning");
    let waiting = wait_for(Duration::from_secs(30), || {
        let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "crash", "-o", "json"])).unwrap();
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CrashLoopBackOff").then_some(w)
    })
    .expect("never CrashLoopBackOff");
    assert!(
        waiting["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=c pod=crash_default("),
        "{waiting}"
    );

    // The missing secret: FailedMount, as upstream words it.
    let e = wait_event(&k, "default", "mount", "FailedMount", |m| {
        m == "MountVolume.SetUp failed for volume \"s\" : secret \"s1\" not found"
    });
    assert_eq!(e["type"], "Warning");
    // The image that is not there, with pull policy Never.
    let never_msg = "Container image \"docker.io/library/nothing:here\" is not present with pull policy of Never";
    wait_event(&k, "default", "never", "ErrImageNeverPull", |m| {
        m == never_msg
    });
    wait_event(&k, "default", "never", "Failed", |m| {
        m == "Error: ErrImageNeverPull"
    });
    // The failing probe: its output, then the kill.
    let e = wait_event(&k, "default", "sick", "Unhealthy", |m| {
        m == "Liveness probe failed: not feeling well\n"
    });
    assert_eq!(e["type"], "Warning");
    wait_event(&k, "default", "sick", "Killing", |m| {
        m == "Container c failed liveness probe, will be restarted"
    });
    // Repeats raise the count instead of adding events.
    let repeated = wait_for(Duration::from_secs(60), || {
        events_of(&k, "default", "sick")
            .into_iter()
            .find(|e| e["reason"] == "Unhealthy" && e["count"].as_i64().unwrap_or(0) >= 2)
    });
    assert!(repeated.is_some(), "{:?}", events_of(&k, "default", "sick"));
    let unhealthy: Vec<Value> = events_of(&k, "default", "sick")
        .into_iter()
        .filter(|e| e["reason"] == "Unhealthy")
        .collect();
    assert_eq!(
        unhealthy.len(),
        1,
        "one Unhealthy event, counted: {unhealthy:#?}"
    );

    // `kubectl debug` with a target: an ephemeral container in the
    // target's process namespace, never restarted, with its status.
    let o = k.run(&[
        "debug",
        "ok",
        &format!("--image={IMAGE}"),
        "--target=c",
        "--container=dbg",
        "--",
        "sh",
        "-c",
        "busybox ps; sleep 3600",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let debug_log = format!("/var/log/pods/default_ok_{uid}/dbg/0.log");
    let ps = wait_for(Duration::from_secs(30), || {
        let l = std::fs::read_to_string(&debug_log).ok()?;
        l.contains("sleep 3600").then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "the debug container never saw the target's processes: {}",
            k.ok(&["get", "pod", "ok", "-o", "json"])
        )
    });
    // PID 1 is the target's: its process namespace is shared.
    let pid1 = ps
        .lines()
        .any(|l| l.split_whitespace().skip(3).collect::<Vec<_>>() == ["1", "0", "sleep", "3600"]);
    assert!(pid1, "the target's process is not there: {ps}");
    let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "ok", "-o", "json"])).unwrap();
    let ec = &p["status"]["ephemeralContainerStatuses"][0];
    assert_eq!(ec["name"], "dbg", "{p}");
    assert!(ec["state"]["running"].is_object(), "{ec}");
    wait_event(&k, "default", "ok", "Started", |m| {
        m == "Started container dbg"
    });
    // Existing ephemeral containers may not be removed.
    let o = k.run(&[
        "patch",
        "pod",
        "ok",
        "--subresource=ephemeralcontainers",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/ephemeralContainers/0"}]"#,
    ]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("existing ephemeral containers \"dbg\" may not be removed"),
        "{}",
        stderr(&o)
    );
    // A pod that does not exist is named in the 404, as kubectl needs.
    let o = k.run(&["debug", "nope", &format!("--image={IMAGE}")]);
    assert!(
        stderr(&o).contains("pods \"nope\" not found"),
        "{}",
        stderr(&o)
    );

    // Deleted: Killing.
    k.ok(&["delete", "pod", "ok", "--wait=false"]);
    wait_event(&k, "default", "ok", "Killing", |m| {
        m == "Stopping container c"
    });
    // `kubectl describe` shows them.
    let d = k.ok(&["describe", "pod", "sick"]);
    assert!(d.contains("Unhealthy") && d.contains("kubelet"), "{d}");
    k.ok(&["delete", "pods", "--all", "--wait=false"]);
    let gone = wait_for(Duration::from_secs(60), || {
        k.ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    });
    assert!(gone.is_some(), "{}", k.ok(&["get", "pods"]));
}
