//! The node's container runtime: containerd from Debian started by the
//! agent with the config it writes, checked over CRI, with the pause image
//! and air-gap image tarballs imported and pinned; a missing or dead
//! runtime makes the node NotReady with the reason. Needs root (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn containerd_runs_under_the_agent_and_imports_air_gap_images() {
    let t = tempdir();
    let dir = t.path().join("s");
    let images = with_busybox(&dir);
    std::fs::write(images.join("broken.tar"), b"this is not a tarball").unwrap();
    let server = Server::start(&dir, &[RUNTIME]);
    let _containers = Containers::of(&dir.join("data"));
    // Not Ready until the pod network is configured too (NetworkReady).
    let n = wait_for(READY, || {
        let n = node(&server, "server-0")?;
        let (status, _) = ready(&n);
        (n["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()?
            .starts_with("containerd://")
            && status == "True")
            .then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "the node never became Ready on containerd:\n{}",
            server.log()
        )
    });
    assert!(n["spec"]["podCIDR"].is_string(), "{n}");
    // The kubelet's status: no pressure on a healthy host, upstream's
    // allocatable (capacity less the 100Mi eviction threshold), max pods.
    let n = wait_for(Duration::from_secs(30), || {
        let n = node(&server, "server-0")?;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "DiskPressure")
            .then_some(n)
    })
    .unwrap_or_else(|| panic!("the kubelet wrote no node status:\n{}", server.log()));
    for c in n["status"]["conditions"].as_array().unwrap() {
        let want = if c["type"] == "Ready" {
            "True"
        } else {
            "False"
        };
        assert_eq!(c["status"], want, "{c}");
    }
    let kib = |q: &Value| {
        q.as_str()
            .unwrap()
            .trim_end_matches("Ki")
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        kib(&n["status"]["capacity"]["memory"]) - kib(&n["status"]["allocatable"]["memory"]),
        100 * 1024
    );
    assert_eq!(n["status"]["allocatable"]["pods"], "110");
    // The config it wrote, the socket under the data dir, the images pinned.
    let cfg = std::fs::read_to_string(dir.join("data/agent/etc/containerd/config.toml")).unwrap();
    assert!(
        cfg.contains("sandbox_image = \"docker.io/rancher/mirrored-pause:3.6\""),
        "{cfg}"
    );
    let socket = dir.join("data/agent/run/containerd/containerd.sock");
    // The runtime reports the same sandbox image back (image GC keeps it).
    let reported = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let cri = rk3sd::agent::runtime::cri::Cri::connect(&socket)
            .await
            .unwrap();
        cri.sandbox_image().await
    });
    assert_eq!(
        reported.as_deref(),
        Some(rk3sd::agent::runtime::images::PAUSE_IMAGE)
    );
    let listed = wait_for(Duration::from_secs(30), || {
        let l = ctr(&socket, &["images", "ls"]);
        (l.contains("docker.io/library/busybox:test") && l.contains("mirrored-pause")).then_some(l)
    })
    .unwrap_or_else(|| panic!("images not imported:\n{}", server.log()));
    for line in listed
        .lines()
        .filter(|l| l.contains("busybox:test") || l.contains("mirrored-pause"))
    {
        assert!(line.contains("io.cri-containerd.pinned=pinned"), "{line}");
    }
    let log = server.log();
    assert!(
        log.contains("broken.tar") && log.contains("skipped"),
        "{log}"
    );
    // A containerd that dies is started again.
    let pid_of = || {
        let o = std::process::Command::new("pgrep")
            .args([
                "-f",
                &format!(
                    "containerd -c {}",
                    dir.join("data/agent/etc/containerd/config.toml").display()
                ),
            ])
            .output()
            .unwrap();
        stdout(&o).trim().to_string()
    };
    let first = pid_of();
    assert!(!first.is_empty(), "containerd is not running");
    std::process::Command::new("kill")
        .args(["-9", &first])
        .status()
        .unwrap();
    let second = wait_for(Duration::from_secs(30), || {
        let p = pid_of();
        (!p.is_empty() && p != first).then_some(p)
    });
    assert!(
        second.is_some(),
        "containerd was not restarted:\n{}",
        server.log()
    );
    assert!(
        server.log().contains("containerd exited"),
        "{}",
        server.log()
    );
    assert!(
        wait_for(READY, || (ready(&node(&server, "server-0")?).0 == "True")
            .then_some(()))
        .is_some()
    );
    // A tarball added later is imported too.
    std::fs::write(
        images.join("later.tar"),
        busybox_archive("docker.io/library/later:1"),
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || ctr(&socket, &["images", "ls"])
            .contains("later:1")
            .then_some(()))
        .is_some()
    );
}

#[test]
fn a_runtime_that_is_missing_or_unreachable_makes_the_node_not_ready() {
    let t = tempdir();
    // No containerd on PATH: the reason names the packages to install.
    let server =
        Server::start_with_env(&t.path().join("s"), &[RUNTIME], &[("PATH", "/nonexistent")]);
    let msg = wait_for(READY, || {
        let (status, msg) = ready(&node(&server, "server-0")?);
        (status == "False").then_some(msg)
    })
    .unwrap_or_else(|| panic!("the node did not go NotReady:\n{}", server.log()));
    assert!(
        msg.contains("containerd is not installed") && msg.contains("containernetworking-plugins"),
        "{msg}"
    );
    drop(server);
    // An endpoint nobody serves.
    let server = Server::start(
        &t.path().join("e"),
        &[
            RUNTIME,
            "--container-runtime-endpoint",
            "unix:///nonexistent/cri.sock",
        ],
    );
    let msg = wait_for(READY, || {
        let (status, msg) = ready(&node(&server, "server-0")?);
        (status == "False").then_some(msg)
    })
    .unwrap_or_else(|| panic!("the node did not go NotReady:\n{}", server.log()));
    assert!(msg.contains("/nonexistent/cri.sock"), "{msg}");
    // A bad endpoint is refused at start with the flag named.
    let o = std::process::Command::new(bin("rk3sd"))
        .args([
            "agent",
            "--config",
            "/dev/null",
            "--server",
            "https://127.0.0.1:1",
            "--token",
            "x",
            "--container-runtime-endpoint",
            "tcp://x",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--container-runtime-endpoint"),
        "{}",
        stderr(&o)
    );
    // Bad server flags added with the runtime and tokens name themselves.
    for (flag, value, says) in [
        ("--cluster-cidr", "10.42.0.1/16", "host bits"),
        ("--node-cidr-mask-size", "8", "node CIDR mask size"),
        (
            "--service-account-max-token-expiration",
            "soon",
            "service-account-max-token-expiration",
        ),
    ] {
        let o = std::process::Command::new(bin("rk3sd"))
            .args(["server", "--config", "/dev/null", flag, value])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flag} {value} was accepted");
        assert!(stderr(&o).contains(says), "{flag}: {}", stderr(&o));
    }
}

/// Delete `pods` and wait until the kubelet has finished them all.
fn delete_all(k: &Kubectl, pods: &[&str]) {
    let mut args = vec!["delete", "pod"];
    args.extend_from_slice(pods);
    args.push("--wait=false");
    k.ok(&args);
    let gone = wait_for(Duration::from_secs(30), || {
        k.ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    });
    assert!(gone.is_some(), "{}", k.ok(&["get", "pods"]));
}

fn pod_json(name: &str, command: &str, policy: &str, image: &str) -> String {
    pod_on(name, command, policy, image, true)
}

fn pod_on(name: &str, command: &str, policy: &str, image: &str, host_network: bool) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "server-0", "hostNetwork": host_network, "restartPolicy": policy,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
                "env": [{"name": "GREETING", "value": "hello"},
                        {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}
    })
    .to_string()
}

#[test]
fn pods_bound_to_the_node_run_report_status_and_terminate() {
    let t = tempdir();
    let dir = t.path().join("s");
    with_busybox(&dir);
    let mut server = Server::start(&dir, &[RUNTIME]);
    let _containers = Containers::of(&dir.join("data"));
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("kcache"));
    assert!(
        wait_for(READY, || (node(&server, "server-0")?["status"]["nodeInfo"]
            ["containerRuntimeVersion"]
            .as_str()?
            .starts_with("containerd://"))
        .then_some(()))
        .is_some()
    );
    let apply = |name: &str, text: String| {
        let f = t.path().join(format!("{name}.json"));
        std::fs::write(&f, text).unwrap();
        k.ok(&["apply", "-f", f.to_str().unwrap()]);
    };
    let image = "docker.io/library/busybox:test";
    apply(
        "web",
        pod_json(
            "web",
            "echo $GREETING from $MY_POD; exec sleep 3600",
            "Always",
            image,
        ),
    );
    wait_ready(&k, &server, "web");
    let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "web", "-o", "json"])).unwrap();
    let st = &p["status"];
    assert_eq!(st["phase"], "Running", "{st}");
    let cs = &st["containerStatuses"][0];
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs}");
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{cs}"
    );
    assert_eq!(cs["ready"], true);
    assert!(
        st["hostIP"].is_string() && st["podIP"].is_string() && st["startTime"].is_string(),
        "{st}"
    );
    let table = k.ok(&["get", "pod", "web"]);
    assert!(
        table.contains("1/1") && table.contains("Running"),
        "{table}"
    );
    // The container's output is in the CRI log under /var/log/pods.
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let log = std::path::PathBuf::from(format!("/var/log/pods/default_web_{uid}/c/0.log"));
    let text = wait_for(Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("hello from web").then_some(t)
    });
    assert!(text.is_some(), "no log at {}", log.display());
    let id = cs["containerID"].as_str().unwrap().to_string();

    // Exit codes, restart policies, a missing image.
    apply("fails", pod_json("fails", "exit 3", "Never", image));
    apply("done", pod_json("done", "exit 0", "OnFailure", image));
    apply(
        "missing",
        pod_json(
            "missing",
            "true",
            "Always",
            "docker.io/library/nothing:here",
        ),
    );
    let phase = |n: &str| {
        let p: Value = serde_json::from_str(&k.ok(&["get", "pod", n, "-o", "json"])).unwrap();
        p["status"].clone()
    };
    let failed = wait_for(READY, || {
        let s = phase("fails");
        (s["phase"] == "Failed").then_some(s)
    })
    .expect("a pod whose container exits 3 with restartPolicy Never fails");
    assert_eq!(
        failed["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3,
        "{failed}"
    );
    assert_eq!(
        failed["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Error"
    );
    assert!(wait_for(READY, || (phase("done")["phase"] == "Succeeded")
        .then_some(()))
    .is_some());
    // `kubectl run --restart=Never`: the scheduler places it, it ends
    // Succeeded (exit 0) or Failed with its exit code.
    for (name, code) in [("run-ok", "0"), ("run-7", "7")] {
        k.ok(&[
            "run",
            name,
            &format!("--image={image}"),
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            &format!("exit {code}"),
        ]);
    }
    let ended = |n: &str| {
        wait_for(READY, || {
            let s = phase(n);
            matches!(s["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(s)
        })
        .unwrap_or_else(|| panic!("{n} never ended: {}\n{}", phase(n), server.log()))
    };
    assert_eq!(ended("run-ok")["phase"], "Succeeded");
    let failed7 = ended("run-7");
    assert_eq!(failed7["phase"], "Failed");
    assert_eq!(
        failed7["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        7
    );
    // A container that keeps crashing: RESTARTS rise, CrashLoopBackOff.
    apply("crash", pod_json("crash", "exit 1", "Always", image));
    let looping = wait_for(Duration::from_secs(90), || {
        let s = phase("crash");
        let cs = &s["containerStatuses"][0];
        (cs["restartCount"].as_i64()? >= 2
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(())
    });
    assert!(looping.is_some(), "{}", phase("crash"));
    let table = k.ok(&["get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    // Only the newest dead container and its log stay (upstream's
    // MaxPerPodContainer = 1): it is the container's last state.
    let crash_uid = k.ok(&["get", "pod", "crash", "-o", "jsonpath={.metadata.uid}"]);
    let socket = rk3sd::agent::runtime::containerd::Paths::new(&dir.join("data")).socket;
    let logs = std::path::PathBuf::from(format!("/var/log/pods/default_crash_{crash_uid}/c"));
    let kept = wait_for(Duration::from_secs(10), || {
        let ids = ctr(
            &socket,
            &[
                "containers",
                "ls",
                "-q",
                // The sandbox has the pod's labels too, not a container name.
                r#"labels."io.kubernetes.pod.name"==crash,labels."io.kubernetes.container.name"==c"#,
            ],
        );
        let files: Vec<String> = std::fs::read_dir(&logs)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Read together, so a restart in between cannot mismatch them.
        let restarts = phase("crash")["containerStatuses"][0]["restartCount"].clone();
        (ids.lines().count() == 1 && files.len() == 1 && files[0] == format!("{restarts}.log"))
            .then_some(files)
    });
    assert!(
        kept.is_some(),
        "dead containers or logs kept: {:?}, {}",
        std::fs::read_dir(&logs).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        phase("crash")
    );
    let missing = wait_for(READY, || {
        let s = phase("missing");
        (s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull")
            .then_some(s)
    });
    assert!(missing.is_some(), "{}", phase("missing"));

    // Pods bound by hand that do not fit the node are refused at
    // admission, as upstream's kubelet refuses them: they end Failed with
    // the reason, and nothing of them reaches the runtime.
    let mut greedy: Value =
        serde_json::from_str(&pod_json("greedy", "true", "Never", image)).unwrap();
    greedy["spec"]["containers"][0]["resources"] = serde_json::json!({"requests": {"cpu": "1000"}});
    apply("greedy", greedy.to_string());
    let mut picky: Value =
        serde_json::from_str(&pod_json("picky", "true", "Never", image)).unwrap();
    picky["spec"]["nodeSelector"] = serde_json::json!({"disktype": "nvme"});
    apply("picky", picky.to_string());
    let refused = |n: &str| {
        wait_for(Duration::from_secs(20), || {
            let s = phase(n);
            (s["phase"] == "Failed").then_some(s)
        })
        .unwrap_or_else(|| panic!("{n} was not refused: {}\n{}", phase(n), server.log()))
    };
    let g = refused("greedy");
    assert_eq!(g["reason"], "OutOfcpu", "{g}");
    let msg = g["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with(
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000, used: 0, capacity: "
        ),
        "{msg}"
    );
    assert!(g.get("containerStatuses").is_none(), "{g}");
    let p = refused("picky");
    assert_eq!(
        (&p["reason"], &p["message"]),
        (
            &Value::from("NodeAffinity"),
            &Value::from("Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector")
        )
    );
    let table = k.ok(&["get", "pod", "greedy"]);
    assert!(table.contains("OutOfcpu"), "{table}");
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=greedy",
        "-o",
        "json",
    ]);
    assert!(events.contains("\"reason\": \"OutOfcpu\""), "{events}");
    for n in ["greedy", "picky"] {
        let selector = format!(r#"labels."io.kubernetes.pod.name"=={n}"#);
        let held = ctr(&socket, &["containers", "ls", "-q", &selector]);
        assert!(held.trim().is_empty(), "the runtime holds {n}: {held}");
    }

    // Pods on the pod network get addresses from the node's pod CIDR and
    // reach each other.
    let cidr = node(&server, "server-0").unwrap()["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cidr, "10.42.0.0/24");
    apply(
        "target",
        pod_on("target", "exec sleep 3600", "Always", image, false),
    );
    wait_ready(&k, &server, "target");
    let ip = phase("target")["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.42.0."), "{ip}");
    apply(
        "pinger",
        pod_on(
            "pinger",
            &format!("busybox ping -c 1 -W 5 {ip}"),
            "Never",
            image,
            false,
        ),
    );
    let reached = wait_for(READY, || {
        let s = phase("pinger");
        matches!(s["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(s)
    });
    assert_eq!(
        reached.as_ref().map(|s| s["phase"].clone()),
        Some(Value::from("Succeeded")),
        "{reached:?}"
    );
    // A finished pod's sandbox is stopped: its address goes back to
    // host-local, while its status keeps showing it (as upstream's).
    let reserved = |ip: &str| dir.join("data/agent/cni/networks/rk3s").join(ip).exists();
    assert!(reserved(&ip), "no host-local reservation for {ip}");
    let pinger_ip = phase("pinger")["podIP"].as_str().unwrap_or("").to_string();
    assert!(pinger_ip.starts_with("10.42.0."), "{}", phase("pinger"));
    let released = wait_for(Duration::from_secs(20), || {
        (!reserved(&pinger_ip)).then_some(())
    });
    assert!(
        released.is_some(),
        "the finished pod's address {pinger_ip} is still reserved"
    );
    assert_eq!(phase("pinger")["podIP"], pinger_ip.as_str());

    // A pod whose sandbox dies gets a new one: its container is stopped
    // and started again in it, the old address is released. After a
    // second death the first sandbox, which no kept container refers to
    // any more, is removed.
    let sandboxes = || {
        let ids = ctr(
            &socket,
            &[
                "containers",
                "ls",
                "-q",
                r#"labels."io.kubernetes.pod.name"==target,labels."io.cri-containerd.kind"==sandbox"#,
            ],
        );
        ids.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let mut old_ip = ip.clone();
    for round in 1..=2 {
        let before = sandboxes();
        let tasks = ctr(&socket, &["tasks", "ls"]);
        let newest = before
            .iter()
            .find(|id| {
                tasks
                    .lines()
                    .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING"))
            })
            .cloned();
        let pause = newest.unwrap_or_else(|| panic!("no running sandbox among {before:?}"));
        ctr(&socket, &["tasks", "kill", "-s", "SIGKILL", &pause]);
        let back = wait_for(Duration::from_secs(60), || {
            let s = phase("target");
            let cs = &s["containerStatuses"][0];
            (cs["restartCount"] == round && cs["ready"] == true && s["podIP"] != old_ip.as_str())
                .then_some(s)
        });
        let s = back.unwrap_or_else(|| {
            panic!(
                "round {round}: not running again in a new sandbox: {}\n{}",
                phase("target"),
                sandboxes().join(" ")
            )
        });
        assert!(
            s["containerStatuses"][0]["lastState"]["terminated"].is_object(),
            "{s}"
        );
        assert!(
            wait_for(Duration::from_secs(20), || (!reserved(&old_ip))
                .then_some(()))
            .is_some(),
            "round {round}: the dead sandbox's address {old_ip} is still reserved"
        );
        old_ip = s["podIP"].as_str().unwrap().to_string();
    }
    // Kept: the ready sandbox and the one holding the previous attempt.
    let kept = wait_for(Duration::from_secs(20), || {
        (sandboxes().len() == 2).then_some(())
    });
    assert!(kept.is_some(), "sandboxes of the pod: {:?}", sandboxes());

    // A hostPort answers on the node's addresses (portmap), and the
    // container's limits are in its cgroup.
    let served = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "served"},
        "spec": {"nodeName": "server-0", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "busybox mkdir -p /www; echo hello-hostport > /www/index.html; \
                    exec busybox httpd -f -p 8080 -h /www"],
                "ports": [{"containerPort": 8080, "hostPort": 18080}],
                "resources": {"requests": {"cpu": "250m", "memory": "32Mi"},
                    "limits": {"cpu": "500m", "memory": "64Mi"}}}]}
    });
    apply("served", served.to_string());
    wait_ready(&k, &server, "served");
    let host_ip = phase("served")["hostIP"].as_str().unwrap().to_string();
    for addr in [host_ip.as_str(), "127.0.0.1"] {
        let url = format!("http://{addr}:18080/");
        let body = wait_for(Duration::from_secs(20), || {
            let o = std::process::Command::new("curl")
                .args(["-s", "-m", "3", &url])
                .output()
                .ok()?;
            let b = stdout(&o);
            b.contains("hello-hostport").then_some(b)
        });
        assert!(body.is_some(), "no answer on the hostPort at {url}");
    }
    let cid = phase("served")["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let info: Value = serde_json::from_str(&ctr(&socket, &["containers", "info", &cid])).unwrap();
    let res = &info["Spec"]["linux"]["resources"];
    assert_eq!(res["memory"]["limit"], 64 << 20, "{res}");
    assert_eq!(res["cpu"]["quota"], 50_000, "{res}");
    assert_eq!(res["cpu"]["period"], 100_000, "{res}");
    assert_eq!(res["cpu"]["shares"], 256, "{res}");
    // What the kernel enforces: cgroup v1 (hybrid) or v2, wherever runc put it.
    let path = info["Spec"]["linux"]["cgroupsPath"]
        .as_str()
        .unwrap()
        .to_string();
    let v1 = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup{path}/memory.max");
    let limit = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap_or_else(|e| panic!("no memory cgroup at {v1} or {v2}: {e}"));
    assert_eq!(limit.trim(), (64u64 << 20).to_string());

    // A restarted agent adopts the running container instead of restarting it.
    assert_eq!(server.stop(), Some(0));
    server.restart();
    std::thread::sleep(Duration::from_secs(3));
    let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "web", "-o", "json"])).unwrap();
    assert_eq!(
        p["status"]["containerStatuses"][0]["containerID"],
        id.as_str()
    );
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);

    // Deleting stops it within its grace period and the kubelet finishes the delete.
    k.ok(&["delete", "pod", "web", "--wait=false"]);
    let gone = wait_for(Duration::from_secs(30), || {
        (!k.run(&["get", "pod", "web"]).status.success()).then_some(())
    });
    assert!(gone.is_some(), "the pod was not deleted:\n{}", server.log());
    let left = ctr(&socket, &["containers", "ls"]);
    assert!(
        !left.contains(id.trim_start_matches("containerd://")),
        "{left}"
    );
    assert!(!log.exists(), "the pod's logs outlived it");
    // The rest go the same way (and take their logs with them).
    delete_all(
        &k,
        &[
            "fails", "done", "missing", "target", "pinger", "run-ok", "run-7", "crash", "served",
            "greedy", "picky",
        ],
    );
}

#[test]
fn pid_pressure_evicts_the_pod_with_the_most_processes() {
    let t = tempdir();
    let dir = t.path().join("s");
    // pid.available under 100 % of pid_max always holds, so the node has
    // PIDPressure from the start and every eviction pass evicts a pod; the
    // first pass comes 30 s after the kubelet starts, when both pods run,
    // and the next one 30 s after that. Under pressure only critical pods
    // are admitted, so both are critical: they still go, ranked by
    // priority and then by processes, as upstream's kubelet ranks them.
    let (server, _containers, k) = ready_node(
        &dir,
        &[
            "--cluster-cidr",
            "10.63.0.0/16",
            "--kubelet-arg=eviction-hard=pid.available<100%",
            "--kubelet-arg=housekeeping-interval=30s",
            "--kubelet-arg=node-status-update-frequency=1s",
        ],
    );
    let image = "docker.io/library/busybox:test";
    let pod = |name: &str, command: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "server-0", "hostNetwork": true, "terminationGracePeriodSeconds": 1,
                "priorityClassName": "system-node-critical",
                "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", command]}]}
        })
    };
    // 21 processes against 1.
    let many = pod(
        "many",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do sleep 3600 & done; wait",
    );
    let one = pod("one", "exec sleep 3600");
    for p in [many, one] {
        k.ok_stdin(&["apply", "-f", "-"], &p.to_string());
    }
    let status = |n: &str| -> Value {
        serde_json::from_str::<Value>(&k.ok(&["get", "pod", n, "-o", "json"])).unwrap()["status"]
            .clone()
    };
    let both = wait_for(Duration::from_secs(25), || {
        (status("many")["phase"] == "Running" && status("one")["phase"] == "Running").then_some(())
    });
    assert!(
        both.is_some(),
        "both pods must run before the first eviction pass: {} {}",
        status("many"),
        status("one")
    );
    let pressure = wait_for(Duration::from_secs(10), || {
        let n = node(&server, "server-0")?;
        let c = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PIDPressure")?
            .clone();
        (c["status"] == "True").then_some(c)
    });
    assert!(pressure.is_some(), "no PIDPressure on the node");
    let evicted = wait_for(Duration::from_secs(40), || {
        let s = status("many");
        (s["reason"] == "Evicted").then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the pod with the most processes was not evicted: {}\n{}",
            status("many"),
            server.log()
        )
    });
    // The other one is still running: it goes at the next pass, not this one.
    let other = status("one");
    assert_eq!(
        other["phase"], "Running",
        "the wrong pod went first: {other}"
    );
    assert_eq!(evicted["phase"], "Failed", "{evicted}");
    let msg = evicted["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("The node was low on resource: pids. Threshold quantity: ")
            && !msg.contains("Container"),
        "{msg}"
    );
    // Picked for its processes, not by a tie: the kubelet counted them
    // (the shell and its 20 sleeps).
    let log = server.log();
    let used: Option<u64> = log
        .lines()
        .find(|l| l.contains("pod evicted") && l.contains("pod=many"))
        .and_then(|l| {
            l.split("used=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
    assert!(used.is_some_and(|n| n >= 21), "counted {used:?}:\n{log}");
    // A pod that is not critical is refused while the pressure lasts: it
    // ends Failed without ever reaching the runtime.
    let mut late = pod("late", "exec sleep 3600");
    late["spec"]
        .as_object_mut()
        .unwrap()
        .remove("priorityClassName");
    k.ok_stdin(&["apply", "-f", "-"], &late.to_string());
    let refused = wait_for(Duration::from_secs(20), || {
        let s = status("late");
        (s["phase"] == "Failed").then_some(s)
    })
    .unwrap_or_else(|| panic!("the pod was not refused: {}", status("late")));
    assert_eq!(refused["reason"], "Evicted", "{refused}");
    assert_eq!(
        refused["message"],
        "Pod was rejected: The node had condition: [PIDPressure]. "
    );
    assert!(refused.get("containerStatuses").is_none(), "{refused}");
    delete_all(&k, &["many", "one", "late"]);
}

#[test]
fn pods_get_their_volumes_environment_and_service_account_token() {
    let t = tempdir();
    let dir = t.path().join("s");
    // Tests run side by side: each pod network its own CIDR, or two
    // bridges would claim the same subnet (pods_bound… has the default).
    let (server, _containers, k) = ready_node(&dir, &["--cluster-cidr", "10.65.0.0/16"]);
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=key=one",
        "--from-literal=mode=fast",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=pw=s3cret",
    ]);
    let script = "echo ENV $FROM_CM $FROM_SECRET $mode; cat /etc/sec/pw; echo; \
        echo NS $(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); \
        echo TOKEN $(cat /var/run/secrets/kubernetes.io/serviceaccount/token); \
        while true; do echo KEY $(cat /etc/cfg/key); sleep 1; done";
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vols"},
        "spec": {"nodeName": "server-0", "hostNetwork": true, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "docker.io/library/busybox:test", "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "env": [
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "key"}}},
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}}],
                "envFrom": [{"configMapRef": {"name": "cfg"}}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                                 {"name": "sec", "mountPath": "/etc/sec", "readOnly": true}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}},
                        {"name": "sec", "secret": {"secretName": "sec"}}]}
    });
    let f = t.path().join("vols.json");
    std::fs::write(&f, pod.to_string()).unwrap();
    k.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_ready(&k, &server, "vols");
    let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "vols", "-o", "json"])).unwrap();
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let log_file = std::path::PathBuf::from(format!("/var/log/pods/default_vols_{uid}/c/0.log"));
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || log()
            .contains("KEY one")
            .then_some(()))
        .is_some(),
        "{}",
        log()
    );
    let text = log();
    assert!(text.contains("ENV one s3cret fast"), "{text}");
    assert!(text.contains("s3cret"), "{text}");
    assert!(text.contains("NS default"), "{text}");
    // The projected token is a working credential of the pod's account.
    let token = text
        .lines()
        .find_map(|l| l.split("TOKEN ").nth(1))
        .map(|t| t.trim().to_string())
        .expect("token in the log");
    let kc = token_kubeconfig(
        &t.path().join("pod-token"),
        &server.url(),
        &server.ca_pem(),
        &token,
    );
    let as_pod = Kubectl::new(kubectl(None), &kc, &t.path().join("pc"));
    let who = as_pod.ok(&["auth", "whoami"]);
    assert!(
        who.contains("system:serviceaccount:default:default"),
        "{who}"
    );
    // A changed ConfigMap reaches the running container.
    k.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"key":"two"}}"#,
    ]);
    let updated = wait_for(Duration::from_secs(60), || {
        log().contains("KEY two").then_some(())
    });
    assert!(updated.is_some(), "the update never reached the pod");
    // A missing ConfigMap keeps a pod's container waiting, with the reason.
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nocm"},
        "spec": {"nodeName": "server-0", "hostNetwork": true,
            "containers": [{"name": "c", "image": "docker.io/library/busybox:test", "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}]}
    });
    std::fs::write(&f, bad.to_string()).unwrap();
    k.ok(&["apply", "-f", f.to_str().unwrap()]);
    let waiting = wait_for(READY, || {
        let p: Value = serde_json::from_str(&k.ok(&["get", "pod", "nocm", "-o", "json"])).ok()?;
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError").then_some(w)
    });
    assert!(
        waiting.is_some(),
        "{}",
        k.ok(&["get", "pod", "nocm", "-o", "yaml"])
    );
    delete_all(&k, &["vols", "nocm"]);
    assert!(
        !dir.join(format!("data/agent/pods/{uid}")).exists(),
        "the pod's volumes outlived it"
    );
}

#[test]
fn probes_gate_readiness_and_restart_failing_containers() {
    let t = tempdir();
    let dir = t.path().join("s");
    with_busybox(&dir);
    // Its own pod network: the other tests' pods share this host.
    // Logs rotated at 4 KiB, checked every second, three files kept.
    let server = Server::start(
        &dir,
        &[
            RUNTIME,
            "--cluster-cidr",
            "10.61.0.0/16",
            "--kubelet-arg=container-log-max-size=4Ki",
            "--kubelet-arg=container-log-max-files=3",
            "--kubelet-arg=container-log-monitor-interval=1s",
        ],
    );
    let _containers = Containers::of(&dir.join("data"));
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("kcache"));
    assert!(
        wait_for(READY, || node(&server, "server-0")?["spec"]["podCIDR"]
            .as_str()
            .map(|_| ()))
        .is_some()
    );
    let image = "docker.io/library/busybox:test";
    let probed = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"},
        "spec": {"nodeName": "server-0", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "web", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "busybox mkdir -p /www; echo ok > /www/index.html; \
                    busybox httpd -f -p 8080 -h /www & sleep 4; busybox touch /www/ready; wait"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 20},
                "livenessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1},
                "readinessProbe": {"exec": {"command": ["cat", "/www/ready"]}, "periodSeconds": 1}}]}
    });
    let dies = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dies"},
        "spec": {"nodeName": "server-0", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2}}]}
    });
    // Lifecycle hooks: postStart runs once the container started, preStop
    // when the pod is deleted, cut off at the grace period (its sleep would
    // outlast it by far).
    let out = t.path().join("hooks");
    std::fs::create_dir_all(&out).unwrap();
    let hooked = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hooked"},
        "spec": {"nodeName": "server-0", "terminationGracePeriodSeconds": 3,
            "volumes": [{"name": "out", "hostPath": {"path": out.to_str().unwrap()}}],
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                "lifecycle": {
                    "postStart": {"exec": {"command": ["sh", "-c", "echo up > /out/started"]}},
                    "preStop": {"exec": {"command": ["sh", "-c", "echo bye > /out/stopped; sleep 600"]}}}}]}
    });
    let chatty = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chatty"},
        "spec": {"nodeName": "server-0", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); \
                    echo line $i 0123456789012345678901234567890123456789; \
                    [ $((i % 50)) = 0 ] && sleep 0.2; done"]}]}
    });
    for pod in [probed, dies, hooked, chatty] {
        k.ok_stdin(&["apply", "-f", "-"], &pod.to_string());
    }
    let status = |n: &str| -> Value {
        serde_json::from_str::<Value>(&k.ok(&["get", "pod", n, "-o", "json"])).unwrap()["status"]
            .clone()
    };
    // Running but not ready until the readiness file exists.
    let running_unready = wait_for(READY, || {
        let s = status("probed");
        let cs = &s["containerStatuses"][0];
        (cs["state"]["running"].is_object() && cs["ready"] == false).then_some(())
    });
    assert!(running_unready.is_some(), "{}", status("probed"));
    wait_ready(&k, &server, "probed");
    let s = status("probed");
    assert_eq!(s["containerStatuses"][0]["started"], true, "{s}");
    // A failing liveness probe restarts the container (after the back-off).
    let restarted = wait_for(Duration::from_secs(60), || {
        let s = status("dies");
        (s["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(s)
    });
    assert!(restarted.is_some(), "{}\n{}", status("dies"), server.log());
    // Running again, it shows how the attempt before ended (`kubectl
    // describe pod`'s "Last State").
    let again = wait_for(Duration::from_secs(60), || {
        let s = status("dies");
        let cs = s["containerStatuses"][0].clone();
        (cs["restartCount"].as_i64()? >= 1 && cs["state"]["running"].is_object()).then_some(cs)
    })
    .unwrap_or_else(|| panic!("never running again: {}", status("dies")));
    let last = &again["lastState"]["terminated"];
    assert!(
        last["exitCode"].as_i64().is_some_and(|c| c != 0)
            && last["finishedAt"].is_string()
            && last["containerID"].is_string()
            && last["containerID"] != again["containerID"],
        "{again}"
    );
    // The healthy one was never restarted.
    assert_eq!(status("probed")["containerStatuses"][0]["restartCount"], 0);

    wait_ready(&k, &server, "hooked");
    let started = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(out.join("started")).ok()
    });
    assert_eq!(started.as_deref(), Some("up\n"), "postStart did not run");
    assert!(!out.join("stopped").exists());
    k.ok(&["delete", "pod", "hooked", "--wait=false"]);
    let began = std::time::Instant::now();
    let gone = wait_for(Duration::from_secs(60), || {
        (!k.run(&["get", "pod", "hooked"]).status.success()).then_some(())
    });
    assert!(
        gone.is_some(),
        "hooked was never deleted:\n{}",
        server.log()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("stopped")).ok().as_deref(),
        Some("bye\n"),
        "preStop did not run"
    );
    // The grace period (3 s) plus the least stop time (2 s) bound it, not
    // the hook's 600 s sleep; the rest is slack for a loaded machine.
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "the delete took {:?}",
        began.elapsed()
    );

    // The chatty container's log was rotated: its directory holds the live
    // file and at most two rotated ones (the older gzipped; a `.tmp` is a
    // compression under way), and output keeps landing in the live one
    // after each rotation.
    let uid = serde_json::from_str::<Value>(&k.ok(&["get", "pod", "chatty", "-o", "json"]))
        .unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let logdir = std::path::PathBuf::from(format!("/var/log/pods/default_chatty_{uid}/c"));
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&logdir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let rotated_twice = wait_for(Duration::from_secs(60), || {
        let f = files();
        (f.iter().filter(|n| n.starts_with("0.log.")).count() >= 2).then_some(f)
    });
    assert!(rotated_twice.is_some(), "{:?}\n{}", files(), server.log());
    for _ in 0..5 {
        let f = files();
        assert!(f.len() <= 3, "more than container-log-max-files: {f:?}");
        assert!(f.contains(&"0.log".to_string()), "{f:?}");
        std::thread::sleep(Duration::from_millis(700));
    }
    let grows = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(logdir.join("0.log")).ok()?;
        text.contains(" stdout F line ").then_some(())
    });
    assert!(grows.is_some(), "the live log stays empty after rotation");
    let gz = wait_for(Duration::from_secs(30), || {
        files().into_iter().find(|n| n.ends_with(".gz"))
    })
    .unwrap_or_else(|| panic!("no gzipped rotated log: {:?}", files()));
    let plain = files()
        .iter()
        .filter(|n| n.starts_with("0.log.") && !n.ends_with(".gz"))
        .count();
    assert!(
        plain <= 1,
        "only the newest rotated log stays plain: {:?}",
        files()
    );
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(logdir.join(&gz))
        .output()
        .unwrap();
    // (Rotated away meanwhile is fine; what was read must be gzip.)
    if logdir.join(&gz).exists() || out.status.success() {
        assert!(out.status.success(), "{gz}: {}", stderr(&out));
        assert!(stdout(&out).contains(" stdout F line "), "{gz}");
    }

    // The kubelet's part of the node status: no pressure on this host
    // (the eviction test makes some), allocatable less the default
    // 100Mi memory threshold, the images.
    let n = node(&server, "server-0").unwrap();
    let st = &n["status"];
    let cond = |t: &str| {
        st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        cond("MemoryPressure")["reason"],
        "KubeletHasSufficientMemory",
        "{st}"
    );
    assert_eq!(cond("DiskPressure")["status"], "False", "{st}");
    assert_eq!(cond("PIDPressure")["reason"], "KubeletHasSufficientPID");
    assert_eq!(cond("Ready")["status"], "True", "{st}");
    let kib = |v: &Value| -> i64 { v.as_str().unwrap().trim_end_matches("Ki").parse().unwrap() };
    assert_eq!(
        kib(&st["capacity"]["memory"]) - kib(&st["allocatable"]["memory"]),
        100 * 1024,
        "{st}"
    );
    assert!(st["capacity"]["ephemeral-storage"].is_string(), "{st}");
    assert_eq!(st["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    let images = st["images"].to_string();
    assert!(
        images.contains("docker.io/library/busybox:test"),
        "{images}"
    );
    delete_all(&k, &["probed", "dies", "chatty"]);
}

#[test]
fn security_context_is_enforced() {
    let t = tempdir();
    let (server, _containers, k) = ready_node(
        &t.path().join("s"),
        &[
            "--cluster-cidr",
            "10.66.0.0/16",
            "--kubelet-arg=allowed-unsafe-sysctls=kernel.msg*",
        ],
    );
    let image = "docker.io/library/busybox:test";
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sec"},
        "spec": {"nodeName": "server-0", "hostNetwork": true, "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "user", "image": image, "imagePullPolicy": "Never",
                 "securityContext": {"runAsUser": 1234, "runAsGroup": 5678, "readOnlyRootFilesystem": true},
                 "command": ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); touch /probe 2>/dev/null && echo rootfs=writable || echo rootfs=readonly; exec sleep 3600"]},
                {"name": "caps", "image": image, "imagePullPolicy": "Never",
                 "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}},
                 "command": ["sh", "-c", "grep CapEff /proc/self/status; touch /probe && echo rootfs=writable; exec sleep 3600"]}]}
    });
    k.ok_stdin(&["create", "-f", "-"], &pod.to_string());
    wait_ready(&k, &server, "sec");
    let uid = k.ok(&["get", "pod", "sec", "-o", "jsonpath={.metadata.uid}"]);
    let output = |pod: &str, uid: &str, c: &str, marker: &str| {
        let path = format!("/var/log/pods/default_{pod}_{uid}/{c}/0.log");
        wait_for(Duration::from_secs(20), || {
            let out = std::fs::read_to_string(&path).ok()?;
            out.contains(marker).then_some(out)
        })
        .unwrap_or_else(|| panic!("no output from {c} in {path}"))
    };
    let logs = |c: &str| output("sec", &uid, c, "rootfs=");
    let user = logs("user");
    assert!(user.contains("uid=1234 gid=5678"), "{user}");
    assert!(user.contains("rootfs=readonly"), "{user}");
    // Only NET_ADMIN (bit 12) is left; the root file system is writable
    // where it was not made read-only.
    let caps = logs("caps");
    assert!(caps.contains("CapEff:\t0000000000001000"), "{caps}");
    assert!(caps.contains("rootfs=writable"), "{caps}");

    // Sysctls: a safe one and an allowed unsafe one are set in the pod's
    // own namespaces, not the node's; others refuse the pod at admission.
    let host = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_string();
    let port_start = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let (host_port_start, host_msgmax) = (host(port_start), host("/proc/sys/kernel/msgmax"));
    let sysctl_pod = |name: &str, host_network: bool, sysctls: Value| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "server-0", "hostNetwork": host_network, "terminationGracePeriodSeconds": 1,
                "securityContext": {"sysctls": sysctls},
                "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "echo port=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start) msgmax=$(cat /proc/sys/kernel/msgmax) done; exec sleep 3600"]}]}
        })
        .to_string()
    };
    let tuned = sysctl_pod(
        "tuned",
        false,
        serde_json::json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"},
            {"name": "kernel.msgmax", "value": "12345"}]),
    );
    k.ok_stdin(&["create", "-f", "-"], &tuned);
    wait_ready(&k, &server, "tuned");
    let tuned_uid = k.ok(&["get", "pod", "tuned", "-o", "jsonpath={.metadata.uid}"]);
    let seen = output("tuned", &tuned_uid, "c", "done");
    assert!(seen.contains("port=80 msgmax=12345"), "{seen}");
    assert_eq!(
        host(port_start),
        host_port_start,
        "the node's own value changed"
    );
    assert_eq!(host("/proc/sys/kernel/msgmax"), host_msgmax);
    // Not allowed on this node: refused by the kubelet's admission.
    let sem = sysctl_pod(
        "semaphores",
        false,
        serde_json::json!([{"name": "kernel.sem", "value": "250 32000 32 128"}]),
    );
    k.ok_stdin(&["create", "-f", "-"], &sem);
    let refused = wait_for(Duration::from_secs(20), || {
        let s: Value =
            serde_json::from_str(&k.ok(&["get", "pod", "semaphores", "-o", "json"])).ok()?;
        (s["status"]["phase"] == "Failed").then_some(s["status"].clone())
    })
    .unwrap_or_else(|| panic!("the pod was not refused:\n{}", server.log()));
    assert_eq!(refused["reason"], "SysctlForbidden", "{refused}");
    assert_eq!(
        refused["message"],
        "Pod was rejected: forbidden sysctl: \"kernel.sem\" not allowlisted"
    );
    // The node's own network namespace: refused by the API already.
    let on_host_net = sysctl_pod(
        "hostcookies",
        true,
        serde_json::json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
    );
    let o = k.run_stdin(&["create", "-f", "-"], &on_host_net);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("spec.securityContext.sysctls[0].name: Invalid value: \"net.ipv4.tcp_syncookies\": may not be specified when 'hostNetwork' is true"),
        "{}",
        stderr(&o)
    );
    delete_all(&k, &["sec", "tuned", "semaphores"]);
}

/// A tmpfs mounted at a path for a test's life (lazily unmounted after,
/// since the runtime's shims may still hold it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount tmpfs: {}", stderr(&o));
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Quietly: the containers' cleanup may have unmounted it already.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

#[test]
fn disk_pressure_evicts_the_pod_using_the_most_disk() {
    let t = tempdir();
    let dir = t.path().join("s");
    // The node's filesystem is a 128 MiB tmpfs holding all the agent's
    // data: containerd's images and snapshots and the pods' volumes.
    // Under 60 % free is pressure (the filler leaves about 45 %); checked
    // every second, and reported
    // until 5 s after it ended.
    let _fs = Tmpfs::mount(&dir.join("data/agent"), "128m");
    let (server, _containers, k) = ready_node(
        &dir,
        &[
            "--cluster-cidr",
            "10.62.0.0/16",
            "--kubelet-arg=eviction-hard=nodefs.available<60%",
            "--kubelet-arg=housekeeping-interval=1s",
            "--kubelet-arg=node-status-update-frequency=1s",
            "--kubelet-arg=eviction-pressure-transition-period=5s",
        ],
    );
    let image = "docker.io/library/busybox:test";
    let pod = |name: &str, command: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "server-0", "hostNetwork": true, "terminationGracePeriodSeconds": 2,
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", command],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}
        })
    };
    // Both write a little; the filler then writes 64 MiB into its emptyDir.
    let quiet = pod("quiet", "echo small > /scratch/f; sleep 3600");
    let filler = pod(
        "filler",
        "echo small > /scratch/f; sleep 3; dd if=/dev/zero of=/scratch/fill bs=1M count=64; sleep 3600",
    );
    for p in [quiet, filler] {
        k.ok_stdin(&["apply", "-f", "-"], &p.to_string());
    }
    wait_ready(&k, &server, "quiet");
    let status = |n: &str| -> Value {
        serde_json::from_str::<Value>(&k.ok(&["get", "pod", n, "-o", "json"])).unwrap()["status"]
            .clone()
    };
    let cond = |conds: &Value, t: &str| -> Value {
        conds
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .cloned()
            .unwrap_or_default()
    };
    // The node reports the pressure while the filler's data is there.
    let pressed = wait_for(Duration::from_secs(60), || {
        let n = node(&server, "server-0")?;
        (cond(&n["status"]["conditions"], "DiskPressure")["status"] == "True").then_some(n)
    });
    if pressed.is_none() {
        let sh = |c: &str| {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .output()
                .unwrap();
            format!("{}{}", stdout(&o), stderr(&o))
        };
        let agent = dir.join("data/agent");
        panic!(
            "no DiskPressure: {}\n{}\nfiller's log: {}\n{}",
            status("filler"),
            sh(&format!(
                "df {0}; du -s {0}/* {0}/pods/*/*/*",
                agent.display()
            )),
            stdout(&k.run(&["logs", "filler"])),
            server.log()
        );
    }
    let pressed = pressed.unwrap();
    assert_eq!(
        cond(&pressed["status"]["conditions"], "DiskPressure")["reason"],
        "KubeletHasDiskPressure"
    );
    // The filler is evicted: Failed, upstream's reason, message and
    // condition; its containers are stopped, not restarted.
    let evicted = wait_for(Duration::from_secs(60), || {
        let s = status("filler");
        (s["reason"] == "Evicted").then_some(s)
    })
    .unwrap_or_else(|| panic!("filler not evicted: {}\n{}", status("filler"), server.log()));
    assert_eq!(evicted["phase"], "Failed", "{evicted}");
    let msg = evicted["message"].as_str().unwrap_or_default();
    // (Upstream names containers by their own layer and logs; the
    // filler's data is in a volume, which is the pod's.)
    assert!(
        msg.starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: ")
            && msg.contains(", available: "),
        "{msg}"
    );
    let dt = cond(&evicted["conditions"], "DisruptionTarget");
    assert_eq!(dt["status"], "True", "{evicted}");
    assert_eq!(dt["reason"], "TerminationByKubelet", "{evicted}");
    // Its space comes back (the emptyDir is gone), so the pressure clears
    // and only one pod was evicted: the quiet one keeps running.
    let cleared = wait_for(Duration::from_secs(60), || {
        let n = node(&server, "server-0")?;
        (cond(&n["status"]["conditions"], "DiskPressure")["status"] == "False").then_some(())
    });
    assert!(cleared.is_some(), "DiskPressure stayed:\n{}", server.log());
    let terminated = wait_for(Duration::from_secs(30), || {
        let s = status("filler");
        s["containerStatuses"][0]["state"]["terminated"]
            .is_object()
            .then_some(s)
    });
    assert!(terminated.is_some(), "{}", status("filler"));
    std::thread::sleep(Duration::from_secs(3));
    let later = status("filler");
    assert_eq!(later["phase"], "Failed", "{later}");
    assert_eq!(later["reason"], "Evicted", "{later}");
    assert_eq!(
        cond(&later["conditions"], "DisruptionTarget")["status"],
        "True",
        "the kubelet's own status sync dropped the condition: {later}"
    );
    assert_eq!(later["containerStatuses"][0]["restartCount"], 0, "{later}");
    let q = status("quiet");
    assert_eq!(q["phase"], "Running", "{q}");
    assert!(q["reason"].is_null(), "{q}");
    // And an event says so, from the kubelet.
    let events: Value = serde_json::from_str(&k.ok(&["get", "events", "-o", "json"])).unwrap();
    let ev = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "Evicted" && e["involvedObject"]["name"] == "filler")
        .cloned()
        .unwrap_or_else(|| panic!("no Evicted event: {events}"));
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["source"]["component"], "kubelet");
    delete_all(&k, &["quiet", "filler"]);
}

/// A one-layer image tagged `name` whose layer is busybox plus `extra`
/// bytes of filler; its config differs by `name`, so each is an image of
/// its own even where the layers are shared.
fn image_archive(name: &str, extra: usize) -> Vec<u8> {
    use rk3sd::agent::runtime::images::{docker_archive, LayerFile, LayerLink};
    let bin = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    // Not zeros: nothing along the way may store it sparse.
    let filler: Vec<u8> = (0..extra).map(|i| (i % 251) as u8).collect();
    let mut files = vec![LayerFile {
        path: "bin/busybox",
        data: &bin,
        mode: 0o755,
    }];
    if extra > 0 {
        files.push(LayerFile {
            path: "filler",
            data: &filler,
            mode: 0o644,
        });
    }
    let links: Vec<LayerLink> = ["sh", "sleep", "dd"]
        .iter()
        .map(|l| LayerLink {
            path: Box::leak(format!("bin/{l}").into_boxed_str()),
            target: "busybox",
        })
        .collect();
    docker_archive(name, &files, &links, &[], &["echo", name]).unwrap()
}

/// The image names containerd at `socket` holds (namespace k8s.io).
fn image_names(socket: &std::path::Path) -> Vec<String> {
    ctr(socket, &["images", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// A node whose images live on a 128 MiB tmpfs (about 10 % used) runs
/// a pod of an image imported by hand (not pinned). A 20 MiB image, also
/// not pinned, takes it to about 40 %, and then the pod writes 30 MiB into
/// its emptyDir: about 65 %. Whatever `kubelet_args` make the kubelet
/// remove unused images at that point must remove that image and only
/// it: the air-gap image (pinned, used by no container), the pause image
/// and the pod's image stay, and the pod keeps running, not evicted.
/// Nothing crosses a threshold while `ctr` imports, so no image can go
/// half-imported (`image-minimum-gc-age` is 0). `event`: a warning the
/// node must have got.
fn unused_image_goes_and_the_rest_stays(cidr: &str, kubelet_args: &[&str], event: Option<&str>) {
    let t = tempdir();
    let dir = t.path().join("s");
    let _fs = Tmpfs::mount(&dir.join("data/agent"), "128m");
    let mut args = vec![
        "--cluster-cidr",
        cidr,
        "--kubelet-arg=image-minimum-gc-age=0s",
    ];
    args.extend_from_slice(kubelet_args);
    let (server, _containers, k) = ready_node(&dir, &args);
    let socket = rk3sd::agent::runtime::containerd::Paths::new(&dir.join("data")).socket;
    let import = |name: &str, extra: usize| {
        let file = t
            .path()
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&file, image_archive(name, extra)).unwrap();
        ctr(&socket, &["images", "import", file.to_str().unwrap()]);
        std::fs::remove_file(&file).unwrap();
    };
    let used = "docker.io/library/used:1";
    let big = "docker.io/library/big:1";
    import(used, 0);
    import(big, 20 << 20);
    let user = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"nodeName": "server-0", "hostNetwork": true, "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "c", "image": used, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=30; sleep 3600"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}
    });
    let f = t.path().join("user.json");
    std::fs::write(&f, user.to_string()).unwrap();
    k.ok(&["apply", "-f", f.to_str().unwrap()]);
    let gone = wait_for(Duration::from_secs(60), || {
        let names = image_names(&socket);
        (!names.iter().any(|n| n == big)).then_some(names)
    })
    .unwrap_or_else(|| {
        panic!(
            "the unused image was not removed: {:?}\n{}",
            image_names(&socket),
            server.log()
        )
    });
    for kept in [
        "docker.io/library/busybox:test",
        rk3sd::agent::runtime::images::PAUSE_IMAGE,
        used,
    ] {
        assert!(
            gone.iter().any(|n| n == kept),
            "{kept} was removed: {gone:?}"
        );
    }
    wait_ready(&k, &server, "user");
    // Past a few more passes: nothing else goes, the pod stays.
    std::thread::sleep(Duration::from_secs(3));
    let pod: Value = serde_json::from_str(&k.ok(&["get", "pod", "user", "-o", "json"])).unwrap();
    assert_eq!(pod["status"]["phase"], "Running", "{}", pod["status"]);
    assert!(pod["status"]["reason"].is_null(), "{}", pod["status"]);
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "{}",
        pod["status"]
    );
    assert_eq!(image_names(&socket).len(), gone.len(), "{gone:?}");
    if let Some(reason) = event {
        let events: Value = serde_json::from_str(&k.ok(&["get", "events", "-o", "json"])).unwrap();
        let ev = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["reason"] == reason)
            .cloned()
            .unwrap_or_else(|| panic!("no {reason} event: {events}"));
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["involvedObject"]["kind"], "Node");
        assert_eq!(ev["involvedObject"]["name"], "server-0");
        assert_eq!(ev["source"]["component"], "kubelet");
    }
}

#[test]
fn image_gc_removes_unused_unpinned_images_over_the_high_threshold() {
    // Down to 20 % is out of reach whenever GC starts (at 50 %, 38 MiB or
    // more to free, however far the pod's write got): the 20 MiB image
    // goes, and the node is told the rest could not be found.
    unused_image_goes_and_the_rest_stays(
        "10.67.0.0/16",
        &[
            "--kubelet-arg=image-gc-high-threshold=50",
            "--kubelet-arg=image-gc-low-threshold=20",
            "--kubelet-arg=image-gc-period=1s",
        ],
        Some("FreeDiskSpaceFailed"),
    );
}

#[test]
fn disk_pressure_removes_unused_images_before_evicting_pods() {
    // Periodic GC off: only the eviction loop's reclaim can remove it.
    unused_image_goes_and_the_rest_stays(
        "10.64.0.0/16",
        &[
            "--kubelet-arg=image-gc-high-threshold=100",
            "--kubelet-arg=eviction-hard=nodefs.available<45%",
            "--kubelet-arg=housekeeping-interval=1s",
        ],
        None,
    );
}

#[test]
fn a_node_forgotten_while_it_runs_gets_a_new_pod_cidr_and_its_pods_run() {
    let t = tempdir();
    let dir = t.path().join("s");
    let (server, _containers, k) = ready_node(&dir, &["--cluster-cidr", "10.70.0.0/16"]);
    let cidr = |k: &Kubectl| {
        k.ok(&["get", "node", "server-0", "-o", "jsonpath={.spec.podCIDR}"])
            .trim()
            .to_string()
    };
    let first = cidr(&k);
    assert!(first.starts_with("10.70."), "{first}");
    let run = |name: &str| {
        let pod = pod_on(
            name,
            "exec sleep 3600",
            "Always",
            "docker.io/library/busybox:test",
            false,
        );
        k.ok_stdin(&["apply", "-f", "-"], &pod);
        wait_ready(&k, &server, name);
        k.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
    };
    let before = run("before");
    let o = server.ctl(&["node", "forget", "server-0", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // It registers again at once, with another pod CIDR.
    let second = wait_for(Duration::from_secs(60), || {
        let c = k.run(&["get", "node", "server-0", "-o", "jsonpath={.spec.podCIDR}"]);
        let c = stdout(&c).trim().to_string();
        (!c.is_empty() && c != first).then_some(c)
    })
    .unwrap_or_else(|| panic!("no new pod CIDR:\n{}", server.log()));
    // A new pod runs, with an address from the new CIDR.
    let after = run("after");
    let prefix = second.trim_end_matches("0/24");
    assert!(
        after.starts_with(prefix),
        "{after} not in {second} (before: {before} in {first})"
    );
    assert!(
        server
            .log()
            .contains("removed the bridge's address from an earlier pod CIDR"),
        "{}",
        server.log()
    );
    k.ok(&["delete", "pods", "--all", "--wait=false"]);
}
