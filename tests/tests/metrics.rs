//! Resource metrics with nothing to install: the kubelet's
//! `/stats/summary`, `/metrics/resource` and `/pods` (through
//! `nodes/proxy` and the tunnel), `metrics.k8s.io` served by rk3sd
//! itself (`kubectl top` with kubectl 1.27 and the newest), and the
//! HorizontalPodAutoscaler scaling a Deployment up under CPU load and
//! back down when the load ends. Needs root (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

const IMAGE: &str = "docker.io/library/busybox:test";

/// Sampling every second and an HPA that looks every two seconds and
/// stabilizes scale-downs for five, so the test need not wait minutes.
const FAST: &[&str] = &[
    "--kubelet-arg",
    "housekeeping-interval=1s",
    "--kube-controller-manager-arg",
    "horizontal-pod-autoscaler-sync-period=2s",
    "--kube-controller-manager-arg",
    "horizontal-pod-autoscaler-downscale-stabilization=5s",
];

fn raw(k: &Kubectl, path: &str) -> String {
    k.ok(&["get", "--raw", path])
}

/// Millicores in a `kubectl top` cell (`250m`, `1`).
fn millicores(cell: &str) -> u64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => cell.parse::<u64>().unwrap() * 1000,
    }
}

#[test]
fn kubectl_top_reads_the_kubelets_through_the_tunnel() {
    let t = tempdir();
    let dir = t.path().join("s");
    let mut args = vec!["--cluster-cidr", "10.72.0.0/16"];
    args.extend_from_slice(FAST);
    let (server, _containers, k) = ready_node(&dir, &args);
    let pod = |name: &str, script: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "top"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                     "command": ["sh", "-c", script],
                     "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}},
                    {"name": "side", "image": IMAGE, "imagePullPolicy": "Never",
                     "command": ["sleep", "3600"]}]}})
    };
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        pod("burner", "while :; do :; done"),
        pod("idle", "exec sleep 3600"),
    ]});
    k.ok_stdin(&["apply", "-f", "-"], &list.to_string());
    wait_ready(&k, &server, "burner");
    wait_ready(&k, &server, "idle");

    // The kubelet's own API, through nodes/proxy.
    let summary: Value = wait_for(Duration::from_secs(30), || {
        let s: Value =
            serde_json::from_str(&raw(&k, "/api/v1/nodes/server-0/proxy/stats/summary")).ok()?;
        let burner = s["pods"]
            .as_array()?
            .iter()
            .find(|p| p["podRef"]["name"] == "burner")?
            .clone();
        burner["containers"]
            .as_array()?
            .iter()
            .all(|c| c["cpu"]["usageNanoCores"].is_u64())
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no CPU rates in the summary:\n{}",
            raw(&k, "/api/v1/nodes/server-0/proxy/stats/summary")
        )
    });
    assert_eq!(summary["node"]["nodeName"], "server-0");
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let prom = raw(&k, "/api/v1/nodes/server-0/proxy/metrics/resource");
    assert!(
        prom.contains("container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"burner\"}"),
        "{prom}"
    );
    assert!(
        prom.contains("# TYPE node_memory_working_set_bytes gauge"),
        "{prom}"
    );
    let pods: Value = serde_json::from_str(&raw(&k, "/api/v1/nodes/server-0/proxy/pods")).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert!(pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["metadata"]["name"] == "idle"));
    // An unknown node is upstream's NotFound.
    let e = k.fails(&["get", "--raw", "/api/v1/nodes/nosuch/proxy/stats/summary"]);
    assert!(e.contains("not found"), "{e}");

    for v in [Some("1.27"), None] {
        let k = Kubectl::new(kubectl(v), &server.kubeconfig(), &dir.join("kcache"));
        // A busy loop uses most of a core; a sleeper next to nothing.
        let top = wait_for(Duration::from_secs(30), || {
            let o = k.run(&["top", "pod", "--no-headers"]);
            let text = stdout(&o);
            (o.status.success() && text.contains("burner") && text.contains("idle")).then_some(text)
        })
        .unwrap_or_else(|| {
            let o = k.run(&["top", "pod"]);
            panic!(
                "{v:?}: kubectl top pod: {}{}\n{}",
                stdout(&o),
                stderr(&o),
                server.log()
            )
        });
        let cpu_of = |name: &str| {
            let line = top.lines().find(|l| l.starts_with(name)).unwrap();
            millicores(line.split_whitespace().nth(1).unwrap())
        };
        assert!(cpu_of("burner") > 300, "{top}");
        assert!(cpu_of("idle") < 50, "{top}");
        let by_container = k.ok(&["top", "pod", "burner", "--containers", "--no-headers"]);
        assert!(
            by_container.contains("main") && by_container.contains("side"),
            "{by_container}"
        );
        let selected = k.ok(&["top", "pod", "-l", "app=top", "-A", "--no-headers"]);
        assert!(
            selected.lines().all(|l| l.starts_with("default")),
            "{selected}"
        );
        assert_eq!(selected.lines().count(), 2, "{selected}");
        let nodes = k.ok(&["top", "node", "--no-headers"]);
        let cells: Vec<&str> = nodes.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(cells[0], "server-0", "{nodes}");
        assert!(
            cells[2].ends_with('%') && cells[4].ends_with('%'),
            "{nodes}"
        );
    }

    // The metrics API is authorized like any other: a user without a
    // binding is refused, the view role (aggregated) may read it.
    let e = k.fails(&["top", "pod", "--as=nobody"]);
    assert!(e.contains("forbidden"), "{e}");
    k.ok(&[
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        "--user=viewer",
    ]);
    let seen = k.ok(&["top", "pod", "burner", "--as=viewer", "--no-headers"]);
    assert!(seen.starts_with("burner"), "{seen}");
    // A pod without metrics is named.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"},
            "spec": {"nodeSelector": {"nowhere": "x"},
                "containers": [{"name": "c", "image": IMAGE}]}})
        .to_string(),
    );
    let e = k.fails(&["top", "pod", "pending"]);
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn the_autoscaler_scales_a_deployment_up_under_cpu_load_and_back_down() {
    let t = tempdir();
    let dir = t.path().join("s");
    let mut args = vec!["--cluster-cidr", "10.73.0.0/16"];
    args.extend_from_slice(FAST);
    let (server, _containers, k) = ready_node(&dir, &args);
    // Each pod burns a core for 20 s after it starts, then idles.
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "load"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "load"}},
            "template": {"metadata": {"labels": {"app": "load"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "end=$(($(date +%s)+20)); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600"],
                        "resources": {"requests": {"cpu": "200m"}}}]}}}});
    k.ok_stdin(&["apply", "-f", "-"], &deploy.to_string());
    let o = k.run(&["rollout", "status", "deployment/load", "--timeout=90s"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), server.log());
    k.ok(&[
        "autoscale",
        "deployment",
        "load",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);

    let replicas = |k: &Kubectl| -> Option<i64> {
        let d: Value =
            serde_json::from_str(&k.ok(&["get", "deployment", "load", "-o", "json"])).ok()?;
        d["spec"]["replicas"].as_i64()
    };
    let up = wait_for(Duration::from_secs(60), || {
        (replicas(&k)? == 3).then_some(())
    });
    let hpa = || k.ok(&["get", "hpa", "load", "-o", "json"]);
    assert!(
        up.is_some(),
        "never scaled up:\n{}\n{}",
        hpa(),
        k.ok(&["describe", "hpa", "load"])
    );
    let h: Value = serde_json::from_str(&hpa()).unwrap();
    let conds = h["status"]["conditions"].as_array().unwrap();
    let reason = |t: &str| {
        conds
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| c["reason"].clone())
    };
    assert_eq!(
        reason("ScalingActive"),
        Some(json!("ValidMetricFound")),
        "{h}"
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "json",
    ]);
    assert!(
        events.contains("reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    // kubectl's view of it.
    let shown = k.ok(&["get", "hpa", "load"]);
    assert!(shown.contains("cpu:") || shown.contains("%/50%"), "{shown}");

    // The load ends; after the stabilization window the HPA comes down.
    let down = wait_for(Duration::from_secs(120), || {
        (replicas(&k)? == 1).then_some(())
    });
    assert!(
        down.is_some(),
        "never scaled down:\n{}\n{}",
        hpa(),
        k.ok(&["describe", "hpa", "load"])
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "json",
    ]);
    assert!(
        events.contains("New size: 1; reason: All metrics below target"),
        "{events}"
    );
}
