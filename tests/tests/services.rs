//! Service cluster IPs and node ports: allocated from `--service-cidr` and
//! `--service-node-port-range` without duplicates, asked-for values
//! checked with upstream's messages, kept across a replace, released on
//! delete and on a type change, and a full range said so.

use rk3s_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;

fn svc(name: &str, type_: &str, extra_port: &str, cluster_ip: &str) -> String {
    let ip = if cluster_ip.is_empty() {
        String::new()
    } else {
        format!(", \"clusterIP\": \"{cluster_ip}\"")
    };
    format!(
        r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "{name}"}},
            "spec": {{"type": "{type_}", "selector": {{"app": "{name}"}}{ip},
                     "ports": [{{"port": 80, "targetPort": 8080{extra_port}}}]}}}}"#
    )
}

fn get(k: &Kubectl, name: &str) -> Value {
    serde_json::from_str(&k.ok(&["get", "svc", name, "-o", "json"])).unwrap()
}

/// Create `manifest`, which must be refused; the error.
fn create_err(k: &Kubectl, manifest: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = k
        .command(&["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "created: {}", stdout(&o));
    stderr(&o)
}

#[test]
fn cluster_ips_and_node_ports_are_allocated_checked_and_released() {
    let t = tempdir();
    // 16 addresses: .1 is the kubernetes Service's, .10 the DNS's, so 12
    // are handed out; 4 node ports.
    let server = Server::start(
        &t.path().join("s"),
        &[
            "--service-cidr",
            "10.96.0.0/28",
            "--service-node-port-range",
            "30100-30103",
        ],
    );
    let k = Kubectl::new(
        kubectl(None),
        &server.kubeconfig(),
        &t.path().join("kcache"),
    );
    assert_eq!(get(&k, "kubernetes")["spec"]["clusterIP"], "10.96.0.1");

    let mut ips = BTreeSet::new();
    let mut s0_ip = String::new();
    for i in 0..12 {
        k.ok_stdin(
            &["create", "-f", "-"],
            &svc(&format!("s{i}"), "ClusterIP", "", ""),
        );
        let s = get(&k, &format!("s{i}"));
        let ip = s["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert_eq!(s["spec"]["clusterIPs"][0], ip.as_str());
        assert!(ip.starts_with("10.96.0."), "{ip}");
        assert!(ip != "10.96.0.1" && ip != "10.96.0.10", "{ip} is reserved");
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
        if i == 0 {
            s0_ip = ip;
        }
    }
    let full = create_err(&k, &svc("s12", "ClusterIP", "", ""));
    assert!(
        full.contains("failed to allocate a serviceIP: range is full"),
        "{full}"
    );
    // Nothing half-written: the refused Service does not exist.
    assert!(!k.run(&["get", "svc", "s12"]).status.success());

    // Asked-for addresses: taken, out of range, reserved but asked for.
    let taken = ips.iter().next().unwrap().clone();
    let e = create_err(&k, &svc("dup", "ClusterIP", "", &taken));
    assert!(
        e.contains(&format!("spec.clusterIPs: Invalid value: []string{{\"{taken}\"}}: failed to allocate IP {taken}: provided IP is already allocated")),
        "{e}"
    );
    let e = create_err(&k, &svc("far", "ClusterIP", "", "10.0.0.5"));
    assert!(e.contains("the provided IP (10.0.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/28"), "{e}");
    let e = create_err(&k, &svc("bad", "ClusterIP", "", "ten"));
    assert!(
        e.contains("spec.clusterIPs[0]: Invalid value: \"ten\": must be a valid IP address"),
        "{e}"
    );
    k.ok_stdin(
        &["create", "-f", "-"],
        &svc("kube-dns", "ClusterIP", "", "10.96.0.10"),
    );
    // Headless Services hold none.
    k.ok_stdin(
        &["create", "-f", "-"],
        &svc("headless", "ClusterIP", "", "None"),
    );
    assert_eq!(get(&k, "headless")["spec"]["clusterIP"], "None");

    // Deleting gives the address back.
    k.ok(&["delete", "svc", "s0"]);
    k.ok_stdin(&["create", "-f", "-"], &svc("again", "ClusterIP", "", ""));
    let again = get(&k, "again")["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(again, s0_ip, "the only free address is s0's");
    // A replace that leaves the address out keeps it.
    k.ok_stdin(&["replace", "-f", "-"], &svc("again", "ClusterIP", "", ""));
    assert_eq!(get(&k, "again")["spec"]["clusterIP"], again.as_str());

    // Node ports: allocated in range, asked-for ones checked. (Each
    // NodePort Service takes an address too: six are freed.)
    for n in ["s1", "s2", "s3", "s4", "s5", "s6"] {
        k.ok(&["delete", "svc", n]);
    }
    k.ok_stdin(&["create", "-f", "-"], &svc("np1", "NodePort", "", ""));
    let np1 = get(&k, "np1")["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap();
    assert!((30100..=30103).contains(&np1), "{np1}");
    let other = if np1 == 30100 { 30101 } else { 30100 };
    k.ok_stdin(
        &["create", "-f", "-"],
        &svc("np2", "NodePort", &format!(", \"nodePort\": {other}"), ""),
    );
    assert_eq!(get(&k, "np2")["spec"]["ports"][0]["nodePort"], other);
    let e = create_err(
        &k,
        &svc("np3", "NodePort", &format!(", \"nodePort\": {other}"), ""),
    );
    assert!(
        e.contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {other}: provided port is already allocated"
        )),
        "{e}"
    );
    let e = create_err(&k, &svc("np3", "NodePort", ", \"nodePort\": 30500", ""));
    assert!(
        e.contains(
            "provided port is not in the valid range. The range of valid ports is 30100-30103"
        ),
        "{e}"
    );
    // The refused ones left no address claimed: two Services fit again.
    k.ok_stdin(&["create", "-f", "-"], &svc("np3", "NodePort", "", ""));
    k.ok_stdin(&["create", "-f", "-"], &svc("np4", "NodePort", "", ""));
    let e = create_err(&k, &svc("np5", "NodePort", "", ""));
    assert!(e.contains("range is full"), "{e}");
    // Back to ClusterIP: the node port goes, and is free for another.
    k.ok(&[
        "patch",
        "svc",
        "np1",
        "-p",
        r#"{"spec": {"type": "ClusterIP"}}"#,
    ]);
    assert!(get(&k, "np1")["spec"]["ports"][0]["nodePort"].is_null());
    k.ok_stdin(&["create", "-f", "-"], &svc("np5", "NodePort", "", ""));
    assert_eq!(get(&k, "np5")["spec"]["ports"][0]["nodePort"], np1);
    let table = k.ok(&["get", "svc", "np5"]);
    assert!(table.contains(&format!("80:{np1}/TCP")), "{table}");
}

#[test]
fn a_deleted_kubernetes_service_comes_back_with_its_address_held() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &["--service-cidr", "10.96.0.0/28"]);
    let k = Kubectl::new(
        kubectl(None),
        &server.kubeconfig(),
        &t.path().join("kcache"),
    );
    let before = get(&k, "kubernetes");
    k.ok(&["delete", "svc", "kubernetes"]);
    // The leader looks every 10 s, as upstream's reconciler does.
    let back = wait_for(std::time::Duration::from_secs(30), || {
        let o = k
            .command(&["get", "svc", "kubernetes", "-o", "json"])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&o.stdout).ok())?
    })
    .expect("default/kubernetes recreated within 30 s");
    assert_ne!(back["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(back["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(back["spec"]["ports"][0]["name"], "https");
    assert_eq!(back["spec"]["ports"][0]["port"], 443);
    assert_eq!(back["metadata"]["labels"]["provider"], "kubernetes");
    // Its address is claimed again: nobody else can ask for it.
    let e = create_err(&k, &svc("thief", "ClusterIP", "", "10.96.0.1"));
    assert!(e.contains("provided IP is already allocated"), "{e}");
}
