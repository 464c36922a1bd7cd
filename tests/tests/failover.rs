//! The controllers move with leadership: two servers on one PostgreSQL,
//! the leader is killed in the middle of a Deployment's rolling update,
//! and the other server's controllers finish it with no extra pods.
//!
//! The node is simulated: this test plays its kubelet, marking bound
//! pods Running and Ready and finishing their graceful deletes.

use rk3s_tests::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 4
  minReadySeconds: 2
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      containers: [{name: c, image: "busybox:test"}]
"#;

fn leader(s: &Server) -> Option<String> {
    let o = s.ctl(&["status", "-o", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v["leader"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

fn pods(k: &Kubectl) -> Vec<Value> {
    let o = k.run(&["get", "pods", "-l", "app=roll", "-o", "json"]);
    serde_json::from_slice::<Value>(&o.stdout)
        .ok()
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
}

/// One round of the simulated kubelet; returns the live pods.
fn kubelet_round(k: &Kubectl, ip: &AtomicUsize) -> usize {
    let list = pods(k);
    let mut live = 0;
    for p in &list {
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        if !p["metadata"]["deletionTimestamp"].is_null() {
            let _ = k.run(&[
                "delete",
                "pod",
                name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
            continue;
        }
        live += 1;
        let bound = p["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if bound && p["status"]["phase"] != "Running" {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let n = ip.fetch_add(1, Ordering::Relaxed);
            let status = json!({"status": {"phase": "Running", "podIP": format!("10.42.{}.{}", n / 250, n % 250 + 2),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                               {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
            let _ = k.run(&[
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ]);
        }
    }
    live
}

#[test]
fn a_rollout_finishes_under_the_next_leader_without_extra_pods() {
    let pg = Postgres::start();
    let t = tempdir();
    let url = pg.url("failover");
    let env = [
        ("RK3S_DATASTORE_ENDPOINT", url.as_str()),
        ("RK3S_TOKEN", "failover-cluster-secret"),
    ];
    let args = |name: &'static str| {
        vec![
            "--node-name",
            name,
            "--disable-agent",
            "--leader-elect-lease-duration",
            "3s",
            "--leader-elect-retry-period",
            "500ms",
            // The simulated node renews no Lease.
            "--node-monitor-grace-period",
            "1h",
        ]
    };
    let mut s1 = Server::start_with_env(&t.path().join("s1"), &args("server-1"), &env);
    let mut s2 = Server::start_with_env(&t.path().join("s2"), &args("server-2"), &env);
    let first = wait_for(Duration::from_secs(20), || leader(&s1)).expect("a leader");
    // Talk to the server that stays.
    let (victim, survivor) = if first == "server-1" {
        (&mut s1, &s2)
    } else {
        (&mut s2, &s1)
    };
    let k = Kubectl::new(kubectl(None), &survivor.kubeconfig(), &t.path().join("kc"));
    k.ok_stdin(
        &["create", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sim"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated"}],
                "allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"}}})
        .to_string(),
    );
    k.ok_stdin(&["apply", "-f", "-"], DEPLOYMENT);

    let stop = AtomicBool::new(false);
    let most = AtomicUsize::new(0);
    let ip = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let k = Kubectl::new(kubectl(None), &survivor.kubeconfig(), &t.path().join("kl"));
            while !stop.load(Ordering::Relaxed) {
                let live = kubelet_round(&k, &ip);
                most.fetch_max(live, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let o = k.run(&["rollout", "status", "deployment/roll", "--timeout=60s"]);
        assert!(
            o.status.success(),
            "{}{}",
            stderr(&o),
            k.ok(&["get", "rs,pods", "-o", "wide"])
        );
        most.store(0, Ordering::Relaxed);

        // The update starts; once its first new pod exists, the leader dies.
        k.ok(&["set", "env", "deployment/roll", "ROUND=2"]);
        let started = wait_for(Duration::from_secs(30), || {
            let rs = k.ok(&[
                "get",
                "rs",
                "-l",
                "app=roll",
                "-o",
                "jsonpath={.items[*].status.replicas}",
            ]);
            (rs.split_whitespace().count() == 2).then_some(())
        });
        assert!(started.is_some(), "the update never started");
        victim.kill();
        let next = wait_for(Duration::from_secs(20), || {
            leader(survivor).filter(|l| *l != first)
        });
        assert!(next.is_some(), "leadership did not move off {first}");

        let o = k.run(&["rollout", "status", "deployment/roll", "--timeout=90s"]);
        assert!(
            o.status.success(),
            "{}{}\n{}",
            stderr(&o),
            k.ok(&["get", "rs,pods", "-o", "wide"]),
            survivor.log()
        );
        stop.store(true, Ordering::Relaxed);
    });

    // Exactly the replicas, all of the new template; two sets, the old one
    // empty; never more than replicas + maxSurge pods at once.
    let live: Vec<Value> = pods(&k)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(live.len(), 4, "{live:?}");
    let sets: Value =
        serde_json::from_str(&k.ok(&["get", "rs", "-l", "app=roll", "-o", "json"])).unwrap();
    let sets = sets["items"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "a second leader made another set: {sets:?}");
    let new = sets
        .iter()
        .find(|s| s["spec"]["replicas"] == 4)
        .expect("the new set has them all");
    let hash = new["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap();
    assert!(live
        .iter()
        .all(|p| p["metadata"]["labels"]["pod-template-hash"] == hash));
    assert!(sets.iter().any(|s| s["spec"]["replicas"] == 0));
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 5,
        "{most} pods at once, more than replicas + maxSurge"
    );
}
