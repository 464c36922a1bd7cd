//! Any server reaches any node's kubelet: with two servers on PostgreSQL
//! and an agent whose tunnel is on one of them, `kubectl logs`, `exec`,
//! `top`, `nodes/proxy` and the Python client's `stream()` through the
//! other server reach the pod (the
//! second server relays through the first over TLS with its own client
//! certificate). Only servers may relay. Needs root (containerd, network
//! namespaces).

use rk3s_tests::netns::{node_agent, server_ip, start_ha_server, Net};
use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::json;
use std::time::Duration;

const IMAGE: &str = "docker.io/library/busybox:test";
const SECRET: &str = "ha-streams-secret-0815";

#[test]
fn the_server_without_the_tunnel_relays_through_the_one_with_it() {
    let mut net = Net::new();
    let t = tempdir();
    let ns_pg = net.host("pg", "10.77.0.2");
    let ns_s: Vec<String> = (1..=2)
        .map(|i| net.host(&format!("s{i}"), &server_ip(i)))
        .collect();
    let ns_a = net.host("a1", "10.77.0.21");
    let pg = Postgres::start_in(Some(&ns_pg), "10.77.0.2");
    let url = pg.url("kubernetes");
    let servers: Vec<Server> = (1..=2)
        .map(|i| {
            start_ha_server(
                &ns_s[i - 1],
                &t.path().join(format!("s{i}")),
                i,
                &url,
                SECRET,
                &["--disable-agent"],
            )
        })
        .collect();
    let adir = t.path().join("a1");
    with_busybox(&adir);
    let _containers = Containers::of(&adir.join("data"));
    let agent = node_agent(
        &ns_a,
        &adir,
        "a1",
        &servers[0],
        &server_ip(1),
        &["--kubelet-arg", "housekeeping-interval=1s"],
    );
    assert!(
        agent.wait_registration("registered", Duration::from_secs(60)),
        "{}",
        agent.log()
    );
    let holder = wait_for(Duration::from_secs(30), || {
        let s = agent.status()?;
        let c = s["connected_server"].as_str()?.to_string();
        (!c.is_empty()).then_some(c)
    })
    .expect("the agent names the server its tunnel is on");
    // The other server, and kubectl on its host.
    let other = if holder.contains(&format!("{}:", server_ip(1))) {
        1
    } else {
        0
    };
    let k = Kubectl::new(
        kubectl(None),
        &servers[other].kubeconfig(),
        &t.path().join("kcache"),
    )
    .in_netns(&ns_s[other]);
    let up = wait_for(Duration::from_secs(90), || {
        servers[other]
            .wait_status("a1", "Ready", Duration::from_secs(1))
            .then_some(())
    });
    assert!(up.is_some(), "a1 never Ready:\n{}", agent.log());
    // ...which indeed does not hold the tunnel.
    let holder_name = if other == 1 { "s1" } else { "s2" };
    let a1 = servers[other]
        .nodes()
        .into_iter()
        .find(|n| n["name"] == "a1")
        .unwrap();
    assert_eq!(a1["connected"], holder_name, "{a1}");

    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "far"},
        "spec": {"nodeName": "a1", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo hello from far; exec sleep 3600"]}]}});
    k.ok_stdin(&["apply", "-f", "-"], &pod.to_string());
    let o = k.run(&["wait", "--for=condition=Ready", "pod/far", "--timeout=90s"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), agent.log());

    let logs = wait_for(Duration::from_secs(20), || {
        let o = k.run(&["logs", "far"]);
        (o.status.success() && !stdout(&o).is_empty()).then(|| stdout(&o))
    });
    assert_eq!(
        logs.as_deref(),
        Some("hello from far\n"),
        "{}\n{}",
        stderr(&k.run(&["logs", "far"])),
        servers[other].log()
    );
    let o = k.run(&["exec", "far", "--", "sh", "-c", "hostname; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(stdout(&o), "far\n");
    // The kubelet lists the pod from its next usage sample on.
    let summary = wait_for(Duration::from_secs(20), || {
        let s = k.ok(&["get", "--raw", "/api/v1/nodes/a1/proxy/stats/summary"]);
        s.contains("\"name\":\"far\"").then_some(s)
    });
    assert!(
        summary.is_some(),
        "{}",
        k.ok(&["get", "--raw", "/api/v1/nodes/a1/proxy/stats/summary"])
    );
    let top = wait_for(Duration::from_secs(30), || {
        let o = k.run(&["top", "pod", "far", "--no-headers"]);
        o.status.success().then(|| stdout(&o))
    });
    assert!(
        top.as_deref().is_some_and(|t| t.starts_with("far")),
        "{}",
        stderr(&k.run(&["top", "pod", "far"]))
    );

    // The Python client's stream() (WebSocket v4.channel.k8s.io), too.
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(config_file=sys.argv[1])
out = stream(client.CoreV1Api().connect_get_namespaced_pod_exec, "far", "default",
    command=["sh", "-c", "echo py-$((6*7))"], stderr=True, stdin=False, stdout=True, tty=False)
print(repr(out))
"#;
    let kubeconfig = servers[other].kubeconfig();
    let o = net
        .exec(
            &ns_s[other],
            &["python3", "-c", script, kubeconfig.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "'py-42\\n'\n");

    // The relay route is for servers only, even for cluster admins.
    let e = k.fails(&["get", "--raw", "/v1-rk3s/kubelet/a1"]);
    assert!(e.contains("is not a server of this cluster"), "{e}");
}
