//! Scheduler and controller benchmark against a real `rk3sd server` with
//! simulated nodes (Node objects with a Ready status, no kubelet).
//!
//! cargo build --release --workspace
//! target/release/rk3s-schedbench [--nodes 100] [--replicas 1000] [--idle-secs 20]
//!
//! 1. baseline: 8 concurrent clients create `--replicas` pods that no
//!    scheduler picks up (schedulerName `none`): the API's create
//!    throughput in this run, pods/s;
//! 2. a Deployment of `--replicas`: time from its create until every pod
//!    is bound (seen on one watch), as pods/s, and its ratio to (1);
//! 3. the server's CPU while idle with those pods (controllers resyncing,
//!    nothing to do), over `--idle-secs`.

use rk3s_tests::{arg, cpu_secs, tempdir, Server, WatchEvents};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated"}],
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"}}})
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "baseline"}},
        "spec": {"schedulerName": "none", "containers": [{"name": "c", "image": "busybox:test",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) {
    let r = http.post(url).json(body).send().await.unwrap();
    assert!(
        r.status().is_success(),
        "POST {url}: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
}

/// Wait until `want` pods of namespace `ns` are bound, from one watch:
/// when the last one was created, and when the last one was bound.
async fn until_bound(
    http: reqwest::Client,
    base: String,
    ns: &str,
    want: usize,
) -> (Instant, Instant) {
    let r = http
        .get(format!("{base}/api/v1/namespaces/{ns}/pods?watch=1"))
        .send()
        .await
        .unwrap();
    let mut events = WatchEvents::new(r);
    let mut bound = HashSet::new();
    let mut seen = HashSet::new();
    let mut created = None;
    while let Some(ev) = events.next().await {
        let o = &ev["object"];
        let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
        if seen.insert(name.clone()) && seen.len() >= want {
            created = Some(Instant::now());
        }
        if o["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            bound.insert(name);
            if bound.len() >= want {
                return (created.unwrap_or_else(Instant::now), Instant::now());
            }
        }
    }
    panic!("the watch ended with {} of {want} pods bound", bound.len());
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::main]
async fn main() {
    let nodes: usize = arg("--nodes", 100);
    let replicas: usize = arg("--replicas", 1000);
    let idle_secs: u64 = arg("--idle-secs", 20);
    let t = tempdir();
    // Simulated nodes renew no Lease: keep them from going Unknown.
    let server = Server::start(
        &t.path().join("s"),
        &["--disable-agent", "--node-monitor-grace-period", "1h"],
    );
    let http = server.admin_http();
    let base = server.url();
    for i in 0..nodes {
        post(
            &http,
            &format!("{base}/api/v1/nodes"),
            &node(&format!("sim-{i:03}")),
        )
        .await;
    }
    for ns in ["baseline", "bench"] {
        post(
            &http,
            &format!("{base}/api/v1/namespaces"),
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }

    // 1. Create throughput, 8 clients.
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, base, next) = (http.clone(), base.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= replicas {
                        break;
                    }
                    let url = format!("{base}/api/v1/namespaces/baseline/pods");
                    post(&http, &url, &pod(&format!("p-{i:05}"))).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let create_rate = replicas as f64 / t0.elapsed().as_secs_f64();

    // 2. A Deployment until every pod is bound.
    let watch = tokio::spawn(until_bound(http.clone(), base.clone(), "bench", replicas));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:test",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    let cpu_before = cpu_secs(server.pid());
    let t1 = Instant::now();
    post(
        &http,
        &format!("{base}/apis/apps/v1/namespaces/bench/deployments"),
        &deploy,
    )
    .await;
    let (all_created, done) = tokio::time::timeout(Duration::from_secs(600), watch)
        .await
        .expect("all pods bound within 10 min")
        .unwrap();
    let bound_secs = (done - t1).as_secs_f64();
    let deploy_cpu = cpu_secs(server.pid()) - cpu_before;
    let bound_rate = replicas as f64 / bound_secs;

    // 3. Idle CPU with the pods in place (after the writes settle).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = server.pid();
    let c0 = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_cpu = (cpu_secs(pid) - c0) / idle_secs as f64 * 100.0;

    println!("nodes: {nodes}, replicas: {replicas}");
    println!("create throughput (API, 8 clients): {create_rate:.0} pods/s");
    println!(
        "deployment to all bound: {bound_secs:.2} s = {bound_rate:.0} pods/s ({:.2}x create throughput); all created after {:.2} s",
        bound_rate / create_rate,
        (all_created - t1).as_secs_f64()
    );
    println!(
        "server CPU until all bound: {deploy_cpu:.2} s in {bound_secs:.2} s ({:.0} % of the {} cores)",
        deploy_cpu / bound_secs / cores() as f64 * 100.0,
        cores()
    );
    println!(
        "server CPU idle with {} pods: {idle_cpu:.1} % of one core",
        2 * replicas
    );
}
