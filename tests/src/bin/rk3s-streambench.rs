//! Streams through the agent tunnel (needs root, containerd, runc, the CNI
//! plugins and busybox-static, as the runtime tests do).
//!
//! cargo build --release --workspace
//! target/release/rk3s-streambench [--log-mb 100] [--secs 15] [--idle-secs 15]
//!                                  [--execs 30] [--pf-mb 100] [--conns 100]
//!
//! One server that is its own node (its kubelet reached, like any node's,
//! through the tunnel). A pod writes `--log-mb` MB to its log; then, in
//! the same run:
//! 1. baseline: `cat` of the log file, the same bytes read from the page
//!    cache with no API, tunnel or kubelet;
//! 2. `kubectl logs` of the whole log, again and again for `--secs`:
//!    bytes/s next to `cat`'s;
//! 3. heartbeat round trips on the same tunnel (the agent's own, from
//!    `rk3sctl status`), over `--idle-secs` with nothing else on the
//!    tunnel and then during (2): p50/p99 and their ratio;
//! 4. `kubectl exec -- echo`, `--execs` times, next to `ctr task exec` of
//!    the same command in the same container (both are processes that
//!    connect, run `echo` and wait for its exit): p50/p99 and the ratio;
//! 5. `kubectl port-forward`: a `--pf-mb` MB download from busybox httpd
//!    in a pod through it, next to the same download straight from the
//!    pod's IP (the host reaches it on the pod bridge); then `--conns`
//!    connections at once through the one forward.

use rk3s_tests::pods::{ctr, with_busybox, Containers};
use rk3s_tests::{arg, kubectl, pct, wait_for, Kubectl, Server, RUNTIME};
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/library/busybox:test";

/// The embedded agent's heartbeat round trips (p50, p99, samples).
fn rtt(server: &Server) -> (f64, f64, u64) {
    let o = server.ctl(&["status", "-o", "json"]);
    let s: Value = serde_json::from_slice(&o.stdout).expect("rk3sctl status -o json");
    let r = &s["heartbeat_rtt"];
    (
        r["p50_ms"].as_f64().unwrap_or(0.0),
        r["p99_ms"].as_f64().unwrap_or(0.0),
        r["samples"].as_u64().unwrap_or(0),
    )
}

/// Bytes a command writes to stdout, and how long it ran.
fn drain(mut cmd: Command) -> (u64, Duration) {
    let t0 = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd:?} failed");
    (n, t0.elapsed())
}

/// GET `path` from `addr` (HTTP/1.0): the bytes received and the time.
fn download(addr: &str, path: &str) -> (u64, Duration) {
    use std::io::Write;
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    (n, t0.elapsed())
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn main() {
    let log_mb: u64 = arg("--log-mb", 100);
    let secs: u64 = arg("--secs", 15);
    let idle_secs: u64 = arg("--idle-secs", 15);
    let t = rk3s_tests::tempdir();
    let dir = t.path().join("s");
    with_busybox(&dir);
    // Heartbeats every 100 ms: enough samples in each phase; the log is
    // never rotated under the reader.
    let server = Server::start(
        &dir,
        &[
            RUNTIME,
            "--cluster-cidr",
            "10.78.0.0/16",
            "--heartbeat-interval",
            "100ms",
            "--kubelet-arg=container-log-max-size=4Gi",
        ],
    );
    let _containers = Containers::of(&dir.join("data"));
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("kcache"));
    assert!(
        server.wait_status("server-0", "Ready", Duration::from_secs(180)),
        "{}",
        server.log()
    );
    // Lines of 100 bytes, as many as make --log-mb MB.
    let line = "x".repeat(99);
    let script = format!("yes {line} | head -c {log_mb}000000; sleep 3600");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bulk"},
        "spec": {"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script]}]}});
    k.ok_stdin(&["apply", "-f", "-"], &pod.to_string());
    let uid = wait_for(Duration::from_secs(120), || {
        let u = k.ok(&["get", "pod", "bulk", "-o", "jsonpath={.metadata.uid}"]);
        (!u.is_empty()).then_some(u)
    })
    .unwrap();
    let file = Path::new("/var/log/pods")
        .join(format!("default_bulk_{uid}"))
        .join("c/0.log");
    // Written when it stops growing.
    let mut last = 0;
    let written = wait_for(Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_secs(1));
        let now = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let done = now > log_mb * 1_000_000 && now == last;
        last = now;
        done.then_some(now)
    })
    .expect("the pod never finished writing its log");

    // 1. cat, warm (the first run reads the page cache in).
    let mut cats = vec![];
    for _ in 0..4 {
        let mut c = Command::new("cat");
        c.arg(&file);
        cats.push(drain(c));
    }
    let cat = cats[1..]
        .iter()
        .map(|(n, d)| mb_per_s(*n, *d))
        .fold(0.0, f64::max);

    // 3a. heartbeats with an idle tunnel.
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle = rtt(&server);

    // 2. kubectl logs, over and over for --secs; 3b. heartbeats meanwhile.
    let t0 = Instant::now();
    let mut runs = vec![];
    while t0.elapsed() < Duration::from_secs(secs) || runs.len() < 2 {
        runs.push(drain(k.command(&["logs", "bulk"])));
        if runs.len() >= 1000 {
            break;
        }
    }
    let busy = rtt(&server);
    let out_bytes = runs[0].0;
    assert_eq!(
        out_bytes,
        log_mb * 1_000_000,
        "kubectl logs returned {out_bytes} bytes"
    );
    let speeds: Vec<f64> = runs.iter().map(|(n, d)| mb_per_s(*n, *d)).collect();
    let mut sorted = speeds.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = sorted[sorted.len() / 2];

    println!(
        "rk3s-streambench: {log_mb} MB log ({written} bytes on disk), {} kubectl logs runs",
        runs.len()
    );
    println!("  cat of the file (warm):        {cat:9.1} MB/s");
    println!(
        "  kubectl logs (median, best):   {median:9.1} MB/s  {:9.1} MB/s   ratio {:.3}× of cat",
        sorted[sorted.len() - 1],
        median / cat
    );
    println!(
        "  heartbeat RTT idle   p50/p99:  {:7.2} / {:7.2} ms  ({} samples)",
        idle.0, idle.1, idle.2
    );
    println!(
        "  heartbeat RTT busy   p50/p99:  {:7.2} / {:7.2} ms  ({} samples)   p99 ratio {:.2}×",
        busy.0,
        busy.1,
        busy.2,
        if idle.1 > 0.0 { busy.1 / idle.1 } else { 0.0 }
    );

    // 4. exec round trips, kubectl through the tunnel and ctr on the node.
    let execs: usize = arg("--execs", 30);
    let cid = k
        .ok(&[
            "get",
            "pod",
            "bulk",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])
        .trim_start_matches("containerd://")
        .to_string();
    let socket = dir.join("data/agent/run/containerd/containerd.sock");
    let mut kube_exec = vec![];
    let mut ctr_exec = vec![];
    for i in 0..execs {
        let t0 = Instant::now();
        let o = k.run(&["exec", "bulk", "--", "echo"]);
        assert!(
            o.status.success(),
            "kubectl exec failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        kube_exec.push(t0.elapsed());
        let t0 = Instant::now();
        ctr(
            &socket,
            &[
                "task",
                "exec",
                "--exec-id",
                &format!("bench{i}"),
                &cid,
                "echo",
            ],
        );
        ctr_exec.push(t0.elapsed());
    }
    println!(
        "  exec -- echo  kubectl p50/p99: {:7.1} / {:7.1} ms   ctr task exec: {:7.1} / {:7.1} ms   p50 ratio {:.2}×",
        pct(&kube_exec, 0.5),
        pct(&kube_exec, 0.99),
        pct(&ctr_exec, 0.5),
        pct(&ctr_exec, 0.99),
        pct(&kube_exec, 0.5) / pct(&ctr_exec, 0.5)
    );
    k.ok(&["delete", "pod", "bulk", "--wait=false"]);

    // 5. port-forward throughput and many connections.
    let pf_mb: u64 = arg("--pf-mb", 100);
    let conns: usize = arg("--conns", 100);
    let script = format!(
        "mkdir -p /www; busybox head -c {pf_mb}000000 /dev/zero > /www/big; echo ok > /www/small; \
         exec busybox httpd -f -p 8080 -h /www"
    );
    let web = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}});
    k.ok_stdin(&["apply", "-f", "-"], &web.to_string());
    let o = k.run(&["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"]);
    assert!(o.status.success(), "the web pod never became Ready");
    let ip = k.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]);
    let direct_addr = format!("{ip}:8080");
    let (mut pf, port) = k.port_forward("pod/web", 8080);
    let forward_addr = format!("127.0.0.1:{port}");
    let best = |addr: &str| {
        (0..3)
            .map(|_| {
                let (n, d) = download(addr, "/big");
                assert!(n > pf_mb * 1_000_000, "{addr}: {n} bytes");
                mb_per_s(n, d)
            })
            .fold(0.0, f64::max)
    };
    let direct = best(&direct_addr);
    let forwarded = best(&forward_addr);
    println!(
        "  {pf_mb} MB over port-forward: {forwarded:9.1} MB/s   straight to the pod: {direct:9.1} MB/s   ratio {:.2}×",
        forwarded / direct
    );
    let t0 = Instant::now();
    let ok = std::thread::scope(|s| {
        let hs: Vec<_> = (0..conns)
            .map(|_| s.spawn(|| download(&forward_addr, "/small").0 > 0))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|x| *x)
            .count()
    });
    println!(
        "  {conns} connections at once through one forward: {ok} answered in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let _ = pf.kill();
    let _ = pf.wait();
    k.ok(&["delete", "pod", "web", "--wait=false"]);
}
