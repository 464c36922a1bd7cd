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
        // A busy loop uses a good part of a core; a sleeper next to nothing.
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
        // The other tests of this file burn CPU too, so the busy loop's
        // share of the two cores varies; it is still far above the sleeper.
        assert!(cpu_of("burner") >= 100, "{top}");
        assert!(cpu_of("idle") < 50, "{top}");
        assert!(cpu_of("burner") > 5 * cpu_of("idle").max(1), "{top}");
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

    // `kubectl get` prints metrics-server's columns.
    let table = k.ok(&["get", "pods.metrics.k8s.io", "burner"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CPU", "MEMORY", "WINDOW"], "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("burner"),
        "{table}"
    );
    let nodes = k.ok(&["get", "nodes.metrics.k8s.io"]);
    assert!(nodes.contains("server-0"), "{nodes}");

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
    let hpa_events = || {
        k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler",
            "-o",
            "json",
        ])
    };
    let events = hpa_events();
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
    let events = hpa_events();
    assert!(
        events.contains("New size: 1; reason: All metrics below target"),
        "{events}"
    );
}

/// A custom (pods and object) and external metrics adapter (as
/// prometheus-adapter or KEDA serve them) behind the aggregation layer: it lists the pods a query
/// selects through the API and reports the values the test writes.
const ADAPTER: &str = r#"
import datetime, json, os, ssl, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from kubernetes import client, config
state, kubeconfig, ca = sys.argv[1], sys.argv[2], sys.argv[3]
config.load_kube_config(config_file=kubeconfig)
core = client.CoreV1Api()
def read(name):
    with open(os.path.join(state, name)) as f:
        return f.read().strip()
def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
class H(BaseHTTPRequestHandler):
    def send(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        p = url.path
        if p == "/apis/custom.metrics.k8s.io/v1beta2":
            return self.send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "custom.metrics.k8s.io/v1beta2",
                "resources": [{"name": "pods/requests_per_second", "singularName": "", "namespaced": True, "kind": "MetricValueList", "verbs": ["get"]}]})
        if p == "/apis/external.metrics.k8s.io/v1beta1":
            return self.send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "external.metrics.k8s.io/v1beta1",
                "resources": [{"name": "queue_depth", "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList", "verbs": ["get"]}]})
        with open(os.path.join(state, "users"), "a") as f:
            f.write(self.headers.get("X-Remote-User", "") + "\n")
        if p == "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests_per_second":
            pods = core.list_namespaced_pod("default", label_selector=q.get("labelSelector", [""])[0]).items
            items = [{"describedObject": {"kind": "Pod", "namespace": "default", "name": x.metadata.name, "apiVersion": "/v1"},
                      "metric": {"name": "requests_per_second"}, "timestamp": now(), "windowSeconds": 60,
                      "value": read("requests_per_second")} for x in pods if x.status.phase == "Running"]
            return self.send(200, {"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {}, "items": items})
        if p == "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/deployments.apps/hits/hits_per_second":
            return self.send(200, {"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {},
                "items": [{"describedObject": {"kind": "Deployment", "namespace": "default", "name": "hits", "apiVersion": "apps/v1"},
                    "metric": {"name": "hits_per_second"}, "timestamp": now(), "value": read("hits_per_second")}]})
        if p == "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth":
            return self.send(200, {"kind": "ExternalMetricValueList", "apiVersion": "external.metrics.k8s.io/v1beta1", "metadata": {},
                "items": [{"metricName": "queue_depth", "metricLabels": {}, "timestamp": now(), "value": read("queue_depth")}]})
        self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": p})
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(state, "tls.crt"), os.path.join(state, "tls.key"))
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(ca)
srv = HTTPServer(("127.0.0.1", 0), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(os.path.join(state, "port.tmp"), "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(os.path.join(state, "port.tmp"), os.path.join(state, "port"))
srv.serve_forever()
"#;

#[test]
fn the_autoscaler_scales_on_custom_and_external_metrics_from_an_adapter() {
    let t = tempdir();
    let dir = t.path().join("s");
    let mut args = vec!["--cluster-cidr", "10.74.0.0/16"];
    args.extend_from_slice(FAST);
    let (server, _containers, k) = ready_node(&dir, &args);
    let state = t.path().join("adapter");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("requests_per_second"), "25").unwrap();
    std::fs::write(state.join("queue_depth"), "20").unwrap();
    std::fs::write(state.join("hits_per_second"), "30").unwrap();
    extension_tls(&k, &state, "adapter.default.svc");
    let script = state.join("adapter.py");
    std::fs::write(&script, ADAPTER).unwrap();
    let mut adapter = std::process::Command::new("python3")
        .arg(&script)
        .arg(&state)
        .arg(server.kubeconfig())
        .arg(state.join("ca.crt"))
        .stderr(std::fs::File::create(state.join("adapter.log")).unwrap())
        .spawn()
        .unwrap();
    let port = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(state.join("port")).ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "the adapter did not start: {}",
            std::fs::read_to_string(state.join("adapter.log")).unwrap_or_default()
        )
    });
    let port: u16 = port.trim().parse().unwrap();
    let api_service = |group: &str, version: &str| {
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": format!("{version}.{group}")},
            "spec": {"group": group, "version": version,
                "service": {"namespace": "default", "name": "adapter", "port": 443},
                "insecureSkipTLSVerify": true, "groupPriorityMinimum": 100, "versionPriority": 100}})
    };
    let deployment = |name: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"]}]}}}})
    };
    let hpa = |name: &str, metric: Value| {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1, "maxReplicas": 4, "metrics": [metric]}})
    };
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "adapter"},
            "spec": {"ports": [{"port": 443, "targetPort": port}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "adapter"},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": port}]}]},
        api_service("custom.metrics.k8s.io", "v1beta2"),
        api_service("external.metrics.k8s.io", "v1beta1"),
        deployment("web"),
        deployment("queue"),
        deployment("hits"),
        hpa("web", json!({"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
            "target": {"type": "AverageValue", "averageValue": "10"}}})),
        hpa("queue", json!({"type": "External", "external": {"metric": {"name": "queue_depth"},
            "target": {"type": "AverageValue", "averageValue": "5"}}})),
        hpa("hits", json!({"type": "Object", "object": {"metric": {"name": "hits_per_second"},
            "describedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hits"},
            "target": {"type": "AverageValue", "averageValue": "10"}}})),
    ]});
    k.ok_stdin(&["apply", "-f", "-"], &list.to_string());

    let replicas = |name: &str| -> Option<i64> {
        let d: Value =
            serde_json::from_str(&k.ok(&["get", "deployment", name, "-o", "json"])).ok()?;
        d["spec"]["replicas"].as_i64()
    };
    let describe = |name: &str| k.ok(&["describe", "hpa", name]);
    // 25 per pod against 10: 2.5 times the one pod, three.
    let up = wait_for(Duration::from_secs(60), || {
        (replicas("web")? == 3).then_some(())
    });
    assert!(
        up.is_some(),
        "web: {}\n{}",
        describe("web"),
        std::fs::read_to_string(state.join("adapter.log")).unwrap_or_default()
    );
    // 20 in the queue at 5 per replica: four.
    let up = wait_for(Duration::from_secs(60), || {
        (replicas("queue")? == 4).then_some(())
    });
    assert!(up.is_some(), "queue: {}", describe("queue"));
    // 30 hits on the Deployment itself at 10 per replica: three. (A Value
    // target multiplies by the ready pods, as upstream's does, so a
    // constant metric keeps scaling up as pods become ready.)
    let up = wait_for(Duration::from_secs(60), || {
        (replicas("hits")? == 3).then_some(())
    });
    assert!(up.is_some(), "hits: {}", describe("hits"));
    assert!(
        describe("hits").contains("reason: deployment metric hits_per_second above target"),
        "{}",
        describe("hits")
    );
    let shown = describe("web");
    assert!(shown.contains("\"requests_per_second\" on pods"), "{shown}");
    assert!(
        shown.contains("New size: 3; reason: pods metric requests_per_second above target"),
        "{shown}"
    );
    let users = std::fs::read_to_string(state.join("users")).unwrap();
    assert!(
        users
            .lines()
            .all(|u| u == "system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        "{users}"
    );
    // The metric falls; after the stabilization window, one again.
    std::fs::write(state.join("requests_per_second"), "1").unwrap();
    let down = wait_for(Duration::from_secs(60), || {
        (replicas("web")? == 1).then_some(())
    });
    assert!(down.is_some(), "web: {}", describe("web"));
    let _ = adapter.kill();
    let _ = adapter.wait();
}
