//! `kubectl exec`, `attach`, `cp` and `port-forward` through the agent
//! tunnel: the server passes each upgrade to the node's kubelet over the
//! tunnel, the kubelet to containerd's stream server on loopback; SPDY
//! from kubectl 1.27, WebSocket first (refused by the runtime, then SPDY)
//! from the newest, WebSocket `v4.channel.k8s.io` from the Python client.
//! Needs root (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const IMAGE: &str = "docker.io/library/busybox:test";

fn sha256(path: &std::path::Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    stdout(&o).split(' ').next().unwrap().to_string()
}

/// GET / on 127.0.0.1:`port`, HTTP/1.0: the body.
fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn exec_attach_cp_and_port_forward_through_the_tunnel() {
    let t = tempdir();
    let dir = t.path().join("s");
    let (server, _containers, k) = ready_node(&dir, &["--cluster-cidr", "10.71.0.0/16"]);
    let shell = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell", "labels": {"app": "shell"}},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "mkdir -p /www /tmp; echo hello-from-pod > /www/index.html; \
                    busybox httpd -p 8080 -h /www; exec sleep 3600"]}]}});
    let ticker = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"]}]}});
    // kubectl resolves a Service (and its targetPort) to one of its pods.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "shell"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [shell, ticker, svc]});
    k.ok_stdin(&["apply", "-f", "-"], &list.to_string());
    wait_ready(&k, &server, "shell");
    wait_ready(&k, &server, "ticker");

    // 10 MiB of noise for kubectl cp.
    let local = t.path().join("blob");
    let mut noise = vec![0u8; 10 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&local, &noise).unwrap();
    let want = sha256(&local);

    for v in [Some("1.27"), None] {
        let k = Kubectl::new(kubectl(v), &server.kubeconfig(), &dir.join("kcache"));
        // Exit codes and both output streams.
        let o = k.run(&[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{v:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(stdout(&o), "out\n");
        assert!(stderr(&o).contains("err\n"), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("command terminated with exit code 3"),
            "{}",
            stderr(&o)
        );
        // A command that does not exist: the runtime's words.
        let e = k.fails(&["exec", "shell", "--", "/no/such/command"]);
        assert!(
            e.contains("no such file or directory") || e.contains("not found"),
            "{e}"
        );
        // stdin.
        let o = k.run_stdin(&["exec", "-i", "shell", "--", "cat"], "data from stdin\n");
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "data from stdin\n");
        // cp, both ways, 10 MiB.
        k.ok(&["cp", local.to_str().unwrap(), "shell:/tmp/blob"]);
        let inside = k.ok(&["exec", "shell", "--", "busybox", "sha256sum", "/tmp/blob"]);
        assert!(inside.starts_with(&want), "{inside} != {want}");
        let back = t.path().join(format!("back-{}", v.unwrap_or("new")));
        k.ok(&["cp", "shell:/tmp/blob", back.to_str().unwrap()]);
        assert_eq!(sha256(&back), want);
        // port-forward: several connections at once.
        let (mut pf, port) = k.port_forward("pod/shell", 8080);
        let answers: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(move || http_get(port))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for a in &answers {
            assert!(a.contains("hello-from-pod"), "{a}");
        }
        pf.kill().unwrap();
        let _ = pf.wait();
        let (mut pf, port) = k.port_forward("svc/web", 80);
        assert!(http_get(port).contains("hello-from-pod"));
        pf.kill().unwrap();
        let _ = pf.wait();
    }

    // A terminal: a pty on the client side gives one in the container.
    let kbin = kubectl(None);
    let cmd = format!(
        "{} --kubeconfig {} exec -it shell -- sh -c 'tty; stty size'",
        kbin.display(),
        server.kubeconfig().display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COLUMNS", "100")
        .env("LINES", "30")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/"),
        "no tty in the container: {out}{}",
        stderr(&o)
    );

    // attach: the container's own output, live.
    let mut att = k
        .command(&["attach", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(att.stdout.take().unwrap());
    for _ in 0..3 {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    assert!(line.starts_with("tick "), "attach printed {line:?}");
    att.kill().unwrap();
    let _ = att.wait();

    // The Python client's stream() (WebSocket, v4.channel.k8s.io).
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
out = stream(v1.connect_get_namespaced_pod_exec, "shell", "default",
    command=["sh", "-c", "echo py-$((6*7))"], stderr=True, stdin=False, stdout=True, tty=False)
print(repr(out))
"#;
    let o = python(script, &server.kubeconfig());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "'py-42\\n'\n");

    // Authorization: create on pods/exec, as upstream; reading the pod
    // (which kubectl does first) is not enough.
    k.ok(&[
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "reader",
        "--role=reader",
        "--user=nobody",
    ]);
    let e = k.fails(&["exec", "--as=nobody", "shell", "--", "true"]);
    assert!(
        e.contains(r#"User "nobody" cannot create resource "pods/exec""#),
        "{e}"
    );
    k.ok(&["delete", "pods", "--all", "--wait=false"]);
}

/// A node the server cannot connect to at all (its host drops every new
/// inbound connection, as a NAT would): logs and exec still work, since
/// only the agent dials, and the server reaches the kubelet through the
/// tunnel the agent opened.
#[test]
fn a_node_behind_nat_answers_logs_and_exec() {
    use rk3s_tests::netns::{node_agent, node_server, Net};
    let mut net = Net::new();
    let t = tempdir();
    let s_ns = net.host("s1", "10.77.0.11");
    let a_ns = net.host("a1", "10.77.0.21");
    let sdir = t.path().join("s1");
    with_busybox(&sdir);
    let server = node_server(&s_ns, &sdir, "10.77.0.11", "s1", &[]);
    let _cs = Containers::of(&sdir.join("data"));
    // A listener on the agent's host answers the server's host, until the
    // host drops new inbound connections on its network interface (as a
    // NAT would; loopback, where the runtime's stream server listens,
    // stays open): then it never does.
    let reach = || {
        let mut l = net
            .exec(&a_ns, &["busybox", "nc", "-l", "-p", "9999"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let o = net
            .exec(&s_ns, &["busybox", "nc", "-w", "2", "10.77.0.21", "9999"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let _ = l.kill();
        let _ = l.wait();
        o.status.success()
    };
    assert!(reach(), "the hosts do not reach each other to begin with");
    net.exec_ok(
        &a_ns,
        &[
            "iptables", "-A", "INPUT", "-i", "eth0", "-p", "tcp", "--syn", "-j", "DROP",
        ],
    );
    assert!(!reach(), "the node's host still accepts connections");
    let adir = t.path().join("a1");
    with_busybox(&adir);
    let _ca = Containers::of(&adir.join("data"));
    let agent = node_agent(&a_ns, &adir, "a1", &server, "10.77.0.11", &[]);
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &sdir.join("kcache")).in_netns(&s_ns);
    let up = wait_for(Duration::from_secs(90), || {
        server
            .wait_status("a1", "Ready", Duration::from_secs(1))
            .then_some(())
    });
    assert!(up.is_some(), "a1 never Ready:\n{}", agent.log());
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "behind"},
        "spec": {"nodeName": "a1", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo hello from behind; exec sleep 3600"]}]}});
    k.ok_stdin(&["apply", "-f", "-"], &pod.to_string());
    let o = k.run(&[
        "wait",
        "--for=condition=Ready",
        "pod/behind",
        "--timeout=90s",
    ]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), agent.log());
    let logs = wait_for(Duration::from_secs(20), || {
        let l = k.ok(&["logs", "behind"]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(logs.as_deref(), Some("hello from behind\n"));
    let o = k.run(&["exec", "behind", "--", "sh", "-c", "hostname; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(stdout(&o), "behind\n");
}
