//! Pods whose PID 1 ignores SIGTERM (busybox's `sleep` and `httpd`, many
//! shells and plenty of real images) are killed when their grace period
//! ends, however long it is, whether they are deleted, drained or in a
//! deleted namespace; and kubelet calls that run longer than an ordinary
//! runtime request (a preStop hook, an exec probe) are not cut short.
//! Needs root (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/library/busybox:test";

/// A pod spec whose only container runs `command` as PID 1.
fn spec(command: &[&str], grace: i64) -> Value {
    json!({"terminationGracePeriodSeconds": grace,
        "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
            "command": command}]})
}

fn pod(name: &str, ns: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Whether `kubectl get <what>` finds nothing any more.
fn gone(k: &Kubectl, what: &[&str]) -> bool {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend(["-o", "name", "--ignore-not-found"]);
    k.ok(&args).trim().is_empty()
}

/// Seconds from `since` until `what` is gone (polled), at most `limit`.
fn seconds_until_gone(k: &Kubectl, what: &[&str], since: Instant, limit: Duration) -> f64 {
    wait_for(limit, || gone(k, what).then_some(())).unwrap_or_else(|| {
        panic!(
            "{what:?} still there after {limit:?}:\n{}",
            k.ok(&["get", "pods", "-A", "-o", "wide"])
        )
    });
    since.elapsed().as_secs_f64()
}

#[test]
fn pods_that_ignore_sigterm_are_killed_when_their_grace_period_ends() {
    let t = tempdir();
    let dir = t.path().join("s");
    let (server, _containers, k) = ready_node(&dir, &["--cluster-cidr", "10.68.0.0/16"]);
    let out = t.path().join("hooks");
    std::fs::create_dir_all(&out).unwrap();

    // Grace periods longer than the 10 s every CRI call used to be cut
    // off at: the stop was cancelled and tried again with the full grace,
    // so SIGKILL never came.
    let stubborn = pod("stubborn", "default", spec(&["sleep", "3600"], 15));
    // A preStop hook that runs 12 s, then the rest of the 20 s for the stop.
    let mut hooked_spec = spec(&["sleep", "3600"], 20);
    hooked_spec["volumes"] = json!([{"name": "out", "hostPath": {"path": out.to_str().unwrap()}}]);
    hooked_spec["containers"][0]["volumeMounts"] = json!([{"name": "out", "mountPath": "/out"}]);
    hooked_spec["containers"][0]["lifecycle"] = json!({"preStop": {"exec": {"command":
        ["sh", "-c", "sleep 12; echo done > /out/prestop"]}}});
    let hooked = pod("hooked", "default", hooked_spec);
    // An exec readiness probe that takes 11 s, within its 20 s timeout.
    let mut slow_spec = spec(&["sleep", "3600"], 1);
    slow_spec["containers"][0]["readinessProbe"] = json!({"exec": {"command": ["sleep", "11"]},
        "timeoutSeconds": 20, "periodSeconds": 30});
    let slow = pod("slowprobe", "default", slow_spec);
    let doomed = pod("stuck", "doomed", spec(&["sleep", "3600"], 15));
    // The Deployment: httpd as PID 1 has no SIGTERM handler.
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": spec(&["busybox", "httpd", "-f", "-p", "8080", "-h", "/"], 15)}}});
    k.ok(&["create", "namespace", "doomed"]);
    let list = json!({"apiVersion": "v1", "kind": "List",
        "items": [stubborn, hooked, slow, doomed, web]});
    k.ok_stdin(&["apply", "-f", "-"], &list.to_string());
    wait_ready(&k, &server, "stubborn");
    wait_ready(&k, &server, "hooked");
    let o = k.run(&[
        "wait",
        "-n",
        "doomed",
        "--for=condition=Ready",
        "pod/stuck",
        "--timeout=90s",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = k.run(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // The probe's 11 s are not cut off: the pod becomes Ready.
    let o = k.run(&[
        "wait",
        "--for=condition=Ready",
        "pod/slowprobe",
        "--timeout=60s",
    ]);
    assert!(
        o.status.success(),
        "a probe of 11 s within its 20 s timeout never passed: {}\n{}",
        k.ok(&["get", "pod", "slowprobe", "-o", "json"]),
        server.log()
    );

    // Deleted, all at once: the pod, the namespace, and the Deployment's
    // pods drained off the node.
    let t0 = Instant::now();
    k.ok(&["delete", "pod", "stubborn", "hooked", "--wait=false"]);
    k.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    let drain = k.run(&[
        "drain",
        "server-0",
        "--pod-selector=app=web",
        "--ignore-daemonsets",
        "--timeout=60s",
    ]);
    let drained = t0.elapsed().as_secs_f64();
    assert!(
        drain.status.success(),
        "{}{}\n{}",
        stdout(&drain),
        stderr(&drain),
        server.log()
    );
    let limit = Duration::from_secs(40);
    let stubborn_s = seconds_until_gone(&k, &["pod", "stubborn"], t0, limit);
    let hooked_s = seconds_until_gone(&k, &["pod", "hooked"], t0, limit);
    let ns_s = seconds_until_gone(&k, &["namespace", "doomed"], t0, limit);
    // Killed when the grace period ended, not before (SIGTERM does
    // nothing to them) and not much later.
    let within = |what: &str, s: f64, grace: f64| {
        assert!(
            s >= grace - 2.0 && s <= grace + 10.0,
            "{what} went after {s:.1} s; grace {grace} s"
        );
    };
    within("pod stubborn", stubborn_s, 15.0);
    within("pod hooked", hooked_s, 20.0);
    // The namespace's contents go 5 s after it (upstream's grace for
    // namespace deletion), then the pod its own 15 s.
    within("namespace doomed", ns_s, 20.0);
    within("the drain", drained, 15.0);
    // The hook ran its 12 s to the end.
    let marker = std::fs::read_to_string(out.join("prestop")).unwrap_or_default();
    assert_eq!(marker.trim(), "done", "the preStop hook was cut short");
    // The drained pods' replacements wait for a schedulable node.
    k.ok(&["uncordon", "server-0"]);
    let o = k.run(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    k.ok(&["delete", "deploy", "web", "--wait=false"]);
    k.ok(&["delete", "pod", "slowprobe", "--wait=false"]);
    let left = wait_for(Duration::from_secs(40), || {
        k.ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    });
    assert!(left.is_some(), "{}", k.ok(&["get", "pods"]));
}
