//! The pod network across nodes: a server and two agents on hosts of their
//! own (network namespaces on one switch), each with its own containerd
//! and data dir. Every node gets a pod CIDR, routes to the others' pod
//! CIDRs via their addresses, and pods reach each other by pod IP without
//! being masqueraded. Needs root (containerd, namespaces).

use rk3s_tests::netns::{node_agent, node_server, Net};
use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

const NODES: [&str; 3] = ["s1", "a1", "a2"];

fn pod(name: &str, node: &str, command: &str, policy: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": policy, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "docker.io/library/busybox:test",
                "imagePullPolicy": "Never", "command": ["sh", "-c", command]}]}
    })
    .to_string()
}

fn get(k: &Kubectl, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let o = k.run(&args);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

/// Ready nodes by name, with their pod CIDRs.
fn ready_nodes(k: &Kubectl) -> Vec<(String, String)> {
    let Some(list) = get(k, &["nodes"]) else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["spec"]["podCIDR"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn pods_on_different_nodes_reach_each_other_by_pod_ip() {
    let mut net = Net::new();
    let t = tempdir();
    let hosts: Vec<String> = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| net.host(n, &format!("10.77.0.{}", 11 + i)))
        .collect();
    let sdir = t.path().join("s1");
    with_busybox(&sdir);
    let server = node_server(
        &hosts[0],
        &sdir,
        "10.77.0.11",
        "s1",
        &[
            // A stopped node is Unknown (and tainted) within seconds.
            "--node-monitor-grace-period",
            "10s",
            "--node-monitor-period",
            "1s",
            "--heartbeat-interval",
            "2s",
        ],
    );
    let _cs = Containers::of(&sdir.join("data"));
    let mut agents = vec![];
    let mut guards = vec![];
    for (i, name) in NODES.iter().enumerate().skip(1) {
        let dir = t.path().join(name);
        with_busybox(&dir);
        guards.push(Containers::of(&dir.join("data")));
        agents.push(node_agent(
            &hosts[i],
            &dir,
            name,
            &server,
            "10.77.0.11",
            &["--heartbeat-interval", "2s"],
        ));
    }
    let k =
        Kubectl::new(kubectl(None), &server.kubeconfig(), &sdir.join("kcache")).in_netns(&hosts[0]);

    // Ready needs the runtime and the pod network (a CNI config for the
    // node's own pod CIDR); each node's CIDR is its own.
    let nodes = wait_for(Duration::from_secs(90), || {
        let n = ready_nodes(&k);
        (n.len() == 3 && n.iter().all(|(_, c)| !c.is_empty())).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "nodes not Ready: {}\n{}\n{}",
            k.ok(&["get", "nodes", "-o", "wide"]),
            server.log(),
            agents.iter().map(|a| a.log()).collect::<String>()
        )
    });
    let cidrs: std::collections::BTreeSet<&String> = nodes.iter().map(|(_, c)| c).collect();
    assert_eq!(cidrs.len(), 3, "pod CIDRs overlap: {nodes:?}");

    // Each host routes to the two other pod CIDRs via their nodes.
    for (i, host) in hosts.iter().enumerate() {
        let want: Vec<String> = nodes
            .iter()
            .filter(|(n, _)| n != NODES[i])
            .map(|(n, c)| {
                let ip = 11 + NODES.iter().position(|x| x == n).unwrap();
                format!("{c} via 10.77.0.{ip}")
            })
            .collect();
        let ok = wait_for(Duration::from_secs(30), || {
            let routes = net.exec_ok(host, &["ip", "route", "show", "proto", "241"]);
            want.iter().all(|w| routes.contains(w)).then_some(())
        });
        assert!(
            ok.is_some(),
            "{}: routes {:?}, want {want:?}",
            NODES[i],
            net.exec_ok(host, &["ip", "route"])
        );
    }

    // A target pod on every node; their IPs come from their node's CIDR.
    for n in NODES {
        k.ok_stdin(
            &["create", "-f", "-"],
            &pod(&format!("t-{n}"), n, "sleep 3600", "Always"),
        );
    }
    let mut ips = vec![];
    for n in NODES {
        let name = format!("t-{n}");
        let o = k.run(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=90s",
        ]);
        assert!(o.status.success(), "{}{}", stderr(&o), server.log());
        let p = get(&k, &["pod", &name]).unwrap();
        let ip = p["status"]["podIP"].as_str().unwrap().to_string();
        let cidr = &nodes.iter().find(|(x, _)| x == n).unwrap().1;
        let prefix = cidr.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "{name} has {ip}, not in {cidr}");
        ips.push(ip);
    }

    // From a pod on a1, ping the pods on s1 and a2 (and its neighbour on
    // its own node); from s1, the one on a2.
    let ping = |name: &str, node: &str, targets: &[&String]| {
        let cmd: Vec<String> = targets
            .iter()
            .map(|ip| format!("ping -c 2 -W 3 {ip}"))
            .collect();
        k.ok_stdin(
            &["create", "-f", "-"],
            &pod(name, node, &cmd.join(" && "), "Never"),
        );
        let phase = wait_for(Duration::from_secs(60), || {
            let p = get(&k, &["pod", name])?;
            let phase = p["status"]["phase"].as_str()?.to_string();
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        });
        assert_eq!(
            phase.as_deref(),
            Some("Succeeded"),
            "{name} on {node} could not ping {targets:?}: {}",
            k.ok(&["get", "pods", "-o", "wide"])
        );
    };
    ping("ping-from-a1", "a1", &[&ips[0], &ips[2], &ips[1]]);
    ping("ping-from-s1", "s1", &[&ips[2]]);

    // Pod-to-pod traffic is not masqueraded: it went through the rule that
    // returns before MASQUERADE, on the sending node.
    let rules = net.exec_ok(
        &hosts[1],
        &[
            "iptables",
            "-t",
            "nat",
            "-L",
            "RK3S-POSTRTG",
            "-v",
            "-n",
            "-x",
        ],
    );
    let returned: u64 = rules
        .lines()
        .find(|l| l.contains("pod to pod"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        returned > 0,
        "no pod-to-pod packets passed unmasqueraded:\n{rules}"
    );

    // Rules someone else removes (a firewall reload) come back with the
    // next resync, logged once; rules left alone are not logged again.
    net.exec_ok(&hosts[1], &["iptables", "-t", "nat", "-F", "RK3S-POSTRTG"]);

    deployment_rolls_out_across_nodes(&k);

    let restored = wait_for(Duration::from_secs(45), || {
        let rules = net.exec_ok(&hosts[1], &["iptables", "-t", "nat", "-S", "RK3S-POSTRTG"]);
        // The agent logs after it has written the rules, so wait for both:
        // the rules alone can be seen a moment before the line is logged.
        let logged = agents[0]
            .log()
            .contains("masquerade rules were changed or removed; restored");
        (rules.contains("MASQUERADE") && logged).then_some(())
    });
    assert!(
        restored.is_some(),
        "a1's masquerade rules were not restored:\n{}",
        agents[0].log()
    );
    let log = agents[0].log();
    assert_eq!(
        log.matches("masquerading traffic that leaves the cluster CIDR")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("masquerade rules were changed or removed; restored")
            .count(),
        1,
        "{log}"
    );

    // A node that is gone loses its route everywhere. (Its pod goes first:
    // a stopped agent's containers outlive it, as they should.)
    k.ok(&["delete", "pod", "t-a2", "--timeout=60s"]);
    k.ok_stdin(&["apply", "-f", "-"], EVICTEE);
    let o = k.run(&["rollout", "status", "deployment/evictee", "--timeout=90s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let victim = pods_of(&k, "app=evictee")
        .into_iter()
        .find(|p| p["spec"]["nodeName"] == "a2")
        .unwrap_or_else(|| panic!("no evictee on a2: {}", k.ok(&["get", "pods", "-o", "wide"])));
    let a2 = agents.pop().unwrap();
    drop(a2);
    dead_node_pods_are_evicted(&k, &victim);
    // (Refused while its tunnel is still up.)
    let forgot = wait_for(Duration::from_secs(30), || {
        server
            .ctl(&["node", "forget", "a2"])
            .status
            .success()
            .then_some(())
    });
    assert!(
        forgot.is_some(),
        "{}",
        stderr(&server.ctl(&["node", "forget", "a2"]))
    );
    let gone = wait_for(Duration::from_secs(30), || {
        let routes = net.exec_ok(&hosts[1], &["ip", "route", "show", "proto", "241"]);
        (routes.lines().count() == 1).then_some(())
    });
    assert!(
        gone.is_some(),
        "a1 still routes to a2's pods: {}",
        net.exec_ok(&hosts[1], &["ip", "route", "show", "proto", "241"])
    );
    k.ok(&["delete", "pods", "--all", "--timeout=60s"]);
}

/// Spread one per node by the scheduler; tolerates an unreachable node
/// for 2 s instead of admission's 300.
const EVICTEE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: evictee}
spec:
  replicas: 3
  selector: {matchLabels: {app: evictee}}
  template:
    metadata: {labels: {app: evictee}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers: [{name: c, image: "docker.io/library/busybox:test", command: ["sleep", "3600"]}]
"#;

fn pods_of(k: &Kubectl, selector: &str) -> Vec<Value> {
    get(k, &["pods", "-l", selector])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
}

/// a2's agent is stopped: the node goes Unknown and is tainted
/// unreachable (NoSchedule and NoExecute); its evictee pod is deleted once
/// its 2 s toleration ran out and replaced on a live node.
fn dead_node_pods_are_evicted(k: &Kubectl, victim: &Value) {
    let tainted = wait_for(Duration::from_secs(60), || {
        let n = get(k, &["node", "a2"])?;
        let keys: Vec<String> = n["spec"]["taints"]
            .as_array()?
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["key"].as_str().unwrap_or(""),
                    t["effect"].as_str().unwrap_or("")
                )
            })
            .collect();
        (keys.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            && keys.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()))
        .then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "a2 was not tainted: {}",
            k.ok(&["get", "node", "a2", "-o", "yaml"])
        )
    });
    let ready = tainted["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "Unknown", "{ready}");
    let replaced = wait_for(Duration::from_secs(60), || {
        let pods = pods_of(k, "app=evictee");
        let old = pods
            .iter()
            .find(|p| p["metadata"]["uid"] == victim["metadata"]["uid"]);
        let evicted = old.is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null());
        let live: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["status"]["phase"] == "Running")
            .collect();
        (evicted && live.len() == 3 && live.iter().all(|p| p["spec"]["nodeName"] != "a2"))
            .then_some(())
    });
    assert!(
        replaced.is_some(),
        "the pod on a2 was not evicted and replaced: {}",
        k.ok(&["get", "pods", "-l", "app=evictee", "-o", "wide"])
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
    ]);
    assert!(
        events.contains(victim["metadata"]["name"].as_str().unwrap()),
        "{events}"
    );
    // Nothing will finish the evicted pod on the dead node: force it.
    k.ok(&["delete", "deployment", "evictee"]);
    k.ok(&[
        "delete",
        "pod",
        victim["metadata"]["name"].as_str().unwrap(),
        "--grace-period=0",
        "--force",
    ]);
}

fn deployment(k: &Kubectl) -> Value {
    get(k, &["deployment", "web"]).expect("the deployment exists")
}

fn web_pods(k: &Kubectl) -> Vec<Value> {
    get(k, &["pods", "-l", "app=web"])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// Wait until the Deployment is rolled out, checking on every look that
/// availability never drops below `floor` once it was reached.
fn watch_rollout(k: &Kubectl, floor: i64) -> Value {
    let mut reached = false;
    wait_for(Duration::from_secs(120), || {
        let d = deployment(k);
        let st = &d["status"];
        let n = |f: &str| st[f].as_i64().unwrap_or(0);
        reached |= n("availableReplicas") >= floor;
        if reached {
            assert!(
                n("availableReplicas") >= floor,
                "availability fell below {floor} during the rollout: {st}"
            );
        }
        let want = d["spec"]["replicas"].as_i64().unwrap();
        (st["observedGeneration"] == d["metadata"]["generation"]
            && n("updatedReplicas") == want
            && n("replicas") == want
            && n("availableReplicas") == want)
            .then_some(d.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no rollout: {}\n{}",
            deployment(k),
            k.ok(&["get", "rs,pods", "-o", "wide"])
        )
    })
}

/// The scheduler and the ReplicaSet and Deployment controllers with real
/// kubelets: three replicas spread over the three nodes, a rolling restart
/// that keeps them all available (25 % of 3 rounds down to none
/// unavailable), cordon, an unschedulable pod with upstream's message.
fn deployment_rolls_out_across_nodes(k: &Kubectl) {
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=docker.io/library/busybox:test",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ]);
    let o = k.run(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(
        o.status.success(),
        "{}{}\n{}",
        stdout(&o),
        stderr(&o),
        k.ok(&["get", "rs,pods", "-o", "wide"])
    );
    let pods = web_pods(k);
    let nodes: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert_eq!(
        nodes.len(),
        3,
        "replicas not spread over the nodes: {nodes:?}"
    );
    let table = k.ok(&["get", "deployment", "web"]);
    assert!(table.contains("3/3"), "{table}");
    let events = k.ok(&["get", "events", "--field-selector", "reason=Scheduled"]);
    assert!(
        events.contains("Successfully assigned default/web-"),
        "{events}"
    );

    // A rolling restart: a second ReplicaSet (revision 2) takes over.
    // The rollout commands run with the oldest kubectl supported (1.27),
    // the rest with the newest.
    let old = Kubectl {
        bin: kubectl(Some("1.27")),
        kubeconfig: k.kubeconfig.clone(),
        cache: k.cache.join("1.27"),
        netns: k.netns.clone(),
    };
    old.ok(&["rollout", "restart", "deployment/web"]);
    watch_rollout(k, 3);
    let o = old.run(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("successfully rolled out"),
        "{}",
        stdout(&o)
    );
    let sets = get(k, &["rs", "-l", "app=web"]).unwrap();
    let sets = sets["items"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "{sets:?}");
    let by_rev = |r: &str| {
        sets.iter()
            .find(|s| s["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == r)
            .unwrap_or_else(|| panic!("no revision {r}: {sets:?}"))
    };
    assert_eq!(by_rev("1")["spec"]["replicas"], 0);
    assert_eq!(by_rev("2")["spec"]["replicas"], 3);
    let history = old.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo brings the first template back: its ReplicaSet is reused and
    // becomes revision 3.
    let first = by_rev("1")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    old.ok(&["rollout", "undo", "deployment/web"]);
    watch_rollout(k, 3);
    let sets = get(k, &["rs", "-l", "app=web"]).unwrap();
    let sets = sets["items"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "undo made a new set: {sets:?}");
    let back = sets
        .iter()
        .find(|s| s["metadata"]["name"] == first.as_str())
        .unwrap();
    assert_eq!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(back["spec"]["replicas"], 3);

    // Cordoned, a1 gets none of the new replicas.
    k.ok(&["cordon", "a1"]);
    let before: usize = web_pods(k)
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "a1")
        .count();
    k.ok(&["scale", "deployment/web", "--replicas=5"]);
    watch_rollout(k, 3);
    let on_a1 = web_pods(k)
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "a1")
        .count();
    assert_eq!(on_a1, before, "a cordoned node got new pods");
    k.ok(&["uncordon", "a1"]);

    // More than any node has: PodScheduled=False, upstream's message, an event.
    k.ok_stdin(
        &["create", "-f", "-"],
        &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"},
            "spec": {"containers": [{"name": "c", "image": "docker.io/library/busybox:test",
                "resources": {"requests": {"cpu": "64"}}}]}})
        .to_string(),
    );
    let why = wait_for(Duration::from_secs(30), || {
        let p = get(k, &["pod", "huge"])?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        (c["status"] == "False").then_some(c)
    })
    .expect("the huge pod never became unschedulable");
    assert_eq!(why["reason"], "Unschedulable");
    assert!(
        why["message"]
            .as_str()
            .unwrap()
            .starts_with("0/3 nodes are available: 3 Insufficient cpu."),
        "{why}"
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=huge",
    ]);
    assert!(events.contains("FailedScheduling"), "{events}");
    k.ok(&["delete", "pod", "huge"]);

    // Scaled down, then deleted with its sets and pods.
    k.ok(&["scale", "deployment/web", "--replicas=1"]);
    watch_rollout(k, 1);
    assert_eq!(web_pods(k).len(), 1);
    k.ok(&["delete", "deployment", "web"]);
    let gone = wait_for(Duration::from_secs(60), || {
        (get(k, &["pods", "-l", "app=web"])?["items"]
            .as_array()?
            .is_empty())
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "{}",
        k.ok(&["get", "rs,pods", "-o", "wide"])
    );
}
