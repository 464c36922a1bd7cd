//! `kubectl logs` through the agent tunnel: the server reaches the
//! node's kubelet only over the tunnel's streams (it has no other way),
//! with upstream's flags, errors and `-f` ending when the container ends;
//! with kubectl 1.27 and the newest. Needs root (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

const IMAGE: &str = "docker.io/library/busybox:test";

fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", script]})
}

fn pod(name: &str, restart: &str, containers: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
            "containers": containers}})
}

/// `kubectl get --raw` of a pod's log, expected to fail; returns stderr.
fn raw_error(k: &Kubectl, path: &str) -> String {
    k.fails(&["get", "--raw", path])
}

#[test]
fn kubectl_logs_reads_the_kubelet_through_the_tunnel() {
    let t = tempdir();
    let dir = t.path().join("s");
    let (server, _containers, k) = ready_node(&dir, &["--cluster-cidr", "10.69.0.0/16"]);

    // talker: six lines, the last on stderr, then stays up.
    let talker = pod(
        "talker",
        "Always",
        vec![container(
            "c",
            // The runtime copies stdout and stderr separately: the pause
            // keeps their order in the file the order they were written.
            "for i in 1 2 3 4 5; do echo line $i; done; sleep 0.5; echo oops >&2; sleep 3600",
        )],
    );
    // counter: writes for a while and exits (for -f ending with it).
    let counter = pod(
        "counter",
        "Never",
        vec![container(
            "c",
            "for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.5; done",
        )],
    );
    // crasher: its first run fails, the second stays (for --previous).
    let mut crasher = pod(
        "crasher",
        "Always",
        vec![container(
            "c",
            "n=$(cat /d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /d/n; echo run $n; \
             if [ $n -ge 2 ]; then exec sleep 3600; fi; exit 1",
        )],
    );
    crasher["spec"]["volumes"] = json!([{"name": "d", "emptyDir": {}}]);
    crasher["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "d", "mountPath": "/d"}]);
    // two: which container is asked for matters.
    let two = pod(
        "two",
        "Always",
        vec![
            container("a", "echo from a; sleep 3600"),
            container("b", "echo from b; sleep 3600"),
        ],
    );
    // missing: an image that is not on the node, never to be pulled.
    let mut missing = pod("missing", "Always", vec![container("c", "true")]);
    missing["spec"]["containers"][0]["image"] = json!("docker.io/library/nothere:1");
    // ghost: bound to a node that never connected.
    let mut ghost = pod("ghost", "Always", vec![container("c", "true")]);
    ghost["spec"]["nodeName"] = json!("ghost-node");
    let list = json!({"apiVersion": "v1", "kind": "List",
        "items": [talker, crasher, two, missing, ghost]});
    k.ok_stdin(&["apply", "-f", "-"], &list.to_string());
    wait_ready(&k, &server, "talker");
    wait_ready(&k, &server, "two");

    // The whole log, then each flag, with both ends of kubectl's range.
    for v in [Some("1.27"), None] {
        let k = Kubectl::new(kubectl(v), &server.kubeconfig(), &dir.join("kcache"));
        let all = wait_for(Duration::from_secs(20), || {
            let o = k.ok(&["logs", "talker"]);
            o.contains("oops").then_some(o)
        })
        .unwrap_or_else(|| panic!("talker's log never had its six lines\n{}", server.log()));
        assert_eq!(
            all, "line 1\nline 2\nline 3\nline 4\nline 5\noops\n",
            "{v:?}"
        );
        assert_eq!(k.ok(&["logs", "talker", "--tail=2"]), "line 5\noops\n");
        assert_eq!(k.ok(&["logs", "talker", "--limit-bytes=9"]), "line 1\nli");
        assert_eq!(k.ok(&["logs", "talker", "-c", "c", "--since=1h"]), all);
        assert_eq!(
            k.ok(&["logs", "talker", "--since-time=2099-01-01T00:00:00Z"]),
            ""
        );
        let stamped = k.ok(&["logs", "talker", "--timestamps", "--tail=1"]);
        let (stamp, rest) = stamped.split_once(' ').unwrap();
        assert_eq!(rest, "oops\n");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "not an RFC 3339 time: {stamp}"
        );
        // kubectl picks the first container itself; -c the other.
        assert_eq!(k.ok(&["logs", "two", "-c", "b"]), "from b\n");
        assert!(k.ok(&["logs", "two"]).contains("from a"));
        let e = k.fails(&["logs", "two", "-c", "zz"]);
        assert!(e.contains("container zz is not valid for pod two"), "{e}");
    }

    // The Python client: read_namespaced_pod_log, whole and streamed.
    let script = r#"
import sys
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
print(repr(v1.read_namespaced_pod_log("talker", "default", tail_lines=3)))
lines = [l for l in watch.Watch().stream(v1.read_namespaced_pod_log, "talker", "default", container="c", limit_bytes=14)]
print(lines)
"#;
    let o = python(script, &server.kubeconfig());
    assert!(
        o.status.success(),
        "python client failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        stdout(&o),
        "'line 4\\nline 5\\noops\\n'\n['line 1', 'line 2']\n"
    );

    // -f follows while the container writes and ends when it ends:
    // started once the first line is there, it gets the seven to come.
    k.ok_stdin(&["apply", "-f", "-"], &counter.to_string());
    let started = wait_for(Duration::from_secs(60), || {
        let o = k.run(&["logs", "counter"]);
        stdout(&o).contains("tick 1").then_some(())
    });
    assert!(started.is_some(), "counter never started\n{}", server.log());
    let o = k.run(&["logs", "-f", "counter"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ticks: Vec<String> = (1..=8).map(|i| format!("tick {i}")).collect();
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), ticks);

    // --previous: the run before this one.
    let restarted = wait_for(Duration::from_secs(60), || {
        let o = k.ok(&["logs", "crasher"]);
        o.contains("run 2").then_some(())
    });
    assert!(
        restarted.is_some(),
        "crasher never ran twice: {}",
        k.ok(&["get", "pod", "crasher", "-o", "yaml"])
    );
    assert_eq!(k.ok(&["logs", "crasher", "--previous"]), "run 1\n");
    let e = k.fails(&["logs", "talker", "--previous"]);
    assert!(
        e.contains(r#"previous terminated container "c" in pod "talker" not found"#),
        "{e}"
    );

    // Upstream's errors, as Statuses.
    let e = raw_error(&k, "/api/v1/namespaces/default/pods/two/log");
    assert!(
        e.contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{e}"
    );
    let e = raw_error(
        &k,
        "/api/v1/namespaces/default/pods/talker/log?tailLines=-1",
    );
    assert!(
        e.contains("tailLines: Invalid value: -1: must be greater than or equal to 0"),
        "{e}"
    );
    let e = wait_for(Duration::from_secs(30), || {
        let e = k.fails(&["logs", "missing"]);
        e.contains("is waiting to start").then_some(e)
    })
    .unwrap_or_else(|| panic!("{}", k.fails(&["logs", "missing"])));
    assert!(
        e.contains(r#"container "c" in pod "missing" is waiting to start: ErrImageNeverPull"#),
        "{e}"
    );
    let e = k.fails(&["logs", "ghost"]);
    assert!(
        e.contains(r#"cannot reach the kubelet on node "ghost-node""#)
            && e.contains("no tunnel to this server"),
        "{e}"
    );
    let e = k.fails(&["logs", "nosuchpod"]);
    assert!(e.contains(r#"pods "nosuchpod" not found"#), "{e}");
    k.ok(&["delete", "pods", "--all", "--wait=false"]);
}

#[test]
fn logs_follow_survives_rotation_without_losing_a_line() {
    let t = tempdir();
    let dir = t.path().join("s");
    // Logs rotated at 4 KiB, checked every second.
    let (server, _containers, k) = ready_node(
        &dir,
        &[
            "--cluster-cidr",
            "10.70.0.0/16",
            "--kubelet-arg=container-log-max-size=4Ki",
            "--kubelet-arg=container-log-max-files=3",
            "--kubelet-arg=container-log-monitor-interval=1s",
        ],
    );
    // About 180 KB over some 5 s: many rotations while it is followed.
    let writer = pod(
        "writer",
        "Never",
        vec![container(
            "c",
            "i=0; while [ $i -lt 2000 ]; do echo seq $i 0123456789012345678901234567890123456789; \
             i=$((i+1)); [ $((i % 50)) = 0 ] && sleep 0.1; done; true",
        )],
    );
    k.ok_stdin(&["apply", "-f", "-"], &writer.to_string());
    let started = wait_for(Duration::from_secs(60), || {
        stdout(&k.run(&["logs", "writer"]))
            .contains("seq ")
            .then_some(())
    });
    assert!(started.is_some(), "writer never started\n{}", server.log());
    let o = k.run(&["logs", "-f", "writer"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seqs: Vec<u32> = stdout(&o)
        .lines()
        .map(|l| l.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap())
        .collect();
    assert_eq!(
        seqs.last(),
        Some(&1999),
        "-f ended before the container did"
    );
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a line was lost or repeated across a rotation"
        );
    }
    // It started early, and the log rotated under it: rotated files
    // beside the live one.
    assert!(seqs[0] < 1000, "started at {}", seqs[0]);
    let uid = k.ok(&["get", "pod", "writer", "-o", "jsonpath={.metadata.uid}"]);
    let dir = format!("/var/log/pods/default_writer_{uid}/c");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.len() >= 2, "no rotation happened: {files:?}");
}
