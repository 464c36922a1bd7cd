//! Pod start benchmark on one node (needs root, containerd, runc, the CNI
//! plugins and busybox-static, as the runtime tests do).
//!
//! cargo build --release --workspace
//! target/release/rk3s-podbench [--pods 30] [--many 100] [--idle-secs 30]
//!                               [--agents 2] [--across 100]
//!
//! A server without a node (`--disable-agent`) and one agent running
//! containerd, so the agent process is the kubelet (plus its tunnel and
//! load balancer). In the same run:
//! 1. baseline: `ctr run -d` of the same image in the agent's containerd,
//!    `--pods` times one after the other, then as many at once (no
//!    sandbox, no network);
//! 2. pods one after the other: create → Running, as the pod watch sees it
//!    (and create → bound, the API's and the scheduler's share);
//! 3. a burst: `--pods` pods created at once, each create → Running;
//!    next to the runtime's own floor for both, measured the same way:
//!    a sandbox (pause container and pod network) and one container
//!    asked of containerd's CRI directly, with no API and no kubelet;
//! 4. the agent's RSS with no pods and with `--many` pods running, and its
//!    CPU over `--idle-secs` with `--pods` pods running;
//! 5. across nodes: network-namespace hosts, a server that is a node and
//!    `--agents` agents; `--across` pods created at once next to as many
//!    `ctr run -d` at once over the same containerds (`--agents 0` skips).

use rk3s_tests::netns::{node_agent, node_server, Net};
use rk3s_tests::pods::{ctr, with_busybox, Containers};
use rk3s_tests::{arg, cpu_secs, pct, Agent, Server, WatchEvents, RUNTIME};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const IMAGE: &str = "docker.io/library/busybox:test";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]}]}})
}

/// When each pod was first seen Running, and on which node, from one watch;
/// also when it was first seen bound (the API's and the scheduler's share).
#[derive(Default)]
struct Running {
    at: Mutex<HashMap<String, Instant>>,
    bound: Mutex<HashMap<String, Instant>>,
    node: Mutex<HashMap<String, String>>,
    changed: Notify,
}

async fn follow(http: reqwest::Client, base: String, running: Arc<Running>) {
    let r = http
        .get(format!(
            "{base}/api/v1/namespaces/default/pods?watch=1&labelSelector=bench%3Dpods"
        ))
        .send()
        .await
        .unwrap();
    let mut events = WatchEvents::new(r);
    while let Some(ev) = events.next().await {
        let o = &ev["object"];
        if o["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            running
                .bound
                .lock()
                .unwrap()
                .entry(name)
                .or_insert_with(Instant::now);
        }
        if o["status"]["phase"] == "Running" {
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            let node = o["spec"]["nodeName"].as_str().unwrap_or("").to_string();
            running.node.lock().unwrap().insert(name.clone(), node);
            running
                .at
                .lock()
                .unwrap()
                .entry(name)
                .or_insert_with(Instant::now);
            running.changed.notify_waiters();
        }
    }
}

async fn until_running(running: &Running, names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let notified = running.changed.notified();
        if names
            .iter()
            .all(|n| running.at.lock().unwrap().contains_key(n))
        {
            return;
        }
        assert!(Instant::now() < deadline, "pods not Running within 5 min");
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

async fn create(http: &reqwest::Client, base: &str, name: &str) -> Instant {
    let t0 = Instant::now();
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/pods"))
        .json(&pod(name))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create {name}: {}", r.status());
    t0
}

/// What [`at_once`] measured.
struct Burst {
    /// Each pod's create → Running.
    each: Vec<Duration>,
    /// From the first create until the last pod was Running.
    total: Duration,
    /// From the first create until the last create was answered: the
    /// API's share of `total`.
    created: Duration,
}

/// Pods `{prefix}-0..count` created one right after the other, without
/// waiting, until all run.
async fn at_once(
    http: &reqwest::Client,
    base: &str,
    running: &Running,
    prefix: &str,
    count: usize,
) -> Burst {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let t0 = Instant::now();
    let mut starts = HashMap::new();
    for name in &names {
        starts.insert(name.clone(), create(http, base, name).await);
    }
    let created = t0.elapsed();
    until_running(running, &names).await;
    let total = t0.elapsed();
    let at = running.at.lock().unwrap();
    let each = names.iter().map(|n| at[n] - starts[n]).collect();
    Burst {
        each,
        total,
        created,
    }
}

async fn delete_all(http: &reqwest::Client, base: &str) {
    let r = http
        .delete(format!(
            "{base}/api/v1/namespaces/default/pods?labelSelector=bench%3Dpods"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let list: Value = http
            .get(format!(
                "{base}/api/v1/namespaces/default/pods?labelSelector=bench%3Dpods"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list["items"].as_array().is_none_or(Vec::is_empty) {
            return;
        }
        assert!(Instant::now() < deadline, "pods not deleted within 3 min");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `count` `ctr run -d` started at once, spread over the containerds at
/// `sockets`: each one's time, then they are removed.
fn ctr_at_once(sockets: &[PathBuf], count: usize) -> Vec<Duration> {
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let socket = sockets[i % sockets.len()].clone();
            std::thread::spawn(move || {
                let id = format!("bench-ctr-{i}");
                let t0 = Instant::now();
                ctr(
                    &socket,
                    &["run", "-d", "--null-io", IMAGE, &id, "sleep", "3600"],
                );
                t0.elapsed()
            })
        })
        .collect();
    let lat = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ctr_remove(sockets, count);
    lat
}

/// A pod's sandbox (its pause container and the pod network, by the same
/// CNI plugins) and one container, asked of the runtime's CRI directly:
/// the work the kubelet has containerd do for a pod, without the API and
/// the kubelet. Its sandbox carries none of rk3s's pod labels, so the
/// kubelet leaves it alone.
async fn cri_pod(c: rk3sd::agent::runtime::cri::Cri, dir: PathBuf, i: usize) -> (Duration, String) {
    use k8s_cri::v1 as cri;
    let t0 = Instant::now();
    let name = format!("bench-cri-{i}");
    let logs = dir.join(&name);
    std::fs::create_dir_all(&logs).unwrap();
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("{name}-uid"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let rt = &c;
    let sandbox = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .pod_sandbox_id;
    let container = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "c.log".into(),
                linux: Some(cri::LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .unwrap()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container,
    })
    .await
    .unwrap();
    (t0.elapsed(), sandbox)
}

/// [`cri_pod`] `count` times, one after the other (`at_once` false) or
/// all at once; then every sandbox is stopped and removed.
async fn cri_pods(socket: &Path, dir: &Path, count: usize, at_once: bool) -> Vec<Duration> {
    let c = rk3sd::agent::runtime::cri::Cri::connect(socket)
        .await
        .unwrap();
    let mut done = Vec::new();
    if at_once {
        let tasks: Vec<_> = (0..count)
            .map(|i| tokio::spawn(cri_pod(c.clone(), dir.to_path_buf(), i)))
            .collect();
        for t in tasks {
            done.push(t.await.unwrap());
        }
    } else {
        for i in 0..count {
            done.push(cri_pod(c.clone(), dir.to_path_buf(), i).await);
        }
    }
    let rt = &c;
    for (_, id) in &done {
        let _ = rt
            .stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
    }
    done.into_iter().map(|(d, _)| d).collect()
}

/// Kill and remove `bench-ctr-0..count`, spread over `sockets` as
/// [`ctr_at_once`] spreads them.
fn ctr_remove(sockets: &[PathBuf], count: usize) {
    let socket = |i: usize| &sockets[i % sockets.len()];
    for i in 0..count {
        ctr(
            socket(i),
            &["task", "kill", "-s", "KILL", &format!("bench-ctr-{i}")],
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..count {
        let id = format!("bench-ctr-{i}");
        // Already gone once its process was reaped; that is fine.
        let _ = std::process::Command::new("ctr")
            .arg("--address")
            .arg(socket(i))
            .args(["--namespace", "k8s.io", "task", "rm", "-f", &id])
            .output();
        ctr(socket(i), &["container", "rm", &id]);
    }
}

/// Resident memory of `pid` in KiB: all of it, its anonymous part (heap,
/// stacks: the process's own), and the file-backed part (mapped code of
/// the binary and libraries, shared with any other process running them).
#[derive(Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

fn rss_kib(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// Where the resident memory of `pid` sits, from its smaps: the binary's
/// own mappings by permission (code, read-only data, relocated data), other
/// files (shared libraries), and anonymous memory. Tells code that the
/// kernel mapped in from allocations the process made.
fn rss_by_mapping(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 5 && fields[0].contains('-') && !line.ends_with(" kB") {
            let (perms, path) = (fields[1], fields.get(5).copied().unwrap_or(""));
            current = if !exe.is_empty() && path == exe {
                format!("binary {perms}")
            } else if path.starts_with('/') {
                "other files".to_string()
            } else {
                "anonymous".to_string()
            };
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            *by.entry(current.clone()).or_default() += kib;
        }
    }
    by.iter()
        .map(|(k, v)| format!("{k} {:.1}", *v as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |k: u64| k as f64 / 1024.0;
        write!(
            f,
            "{:.1} MiB ({:.1} anonymous + {:.1} file-backed)",
            mib(self.total),
            mib(self.anon),
            mib(self.file)
        )
    }
}

fn containerd_pid(agent_dir: &Path) -> Option<u32> {
    let cfg = agent_dir.join("data/agent/etc/containerd/config.toml");
    let o = std::process::Command::new("pgrep")
        .args(["-f", &format!("containerd -c {}", cfg.display())])
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(one_node());
    drop(rt);
    let agents: usize = arg("--agents", 2);
    if agents > 0 {
        across_nodes(agents, arg("--across", 100));
    }
}

/// Move this thread into network namespace `ns`; threads and processes it
/// starts later are in it too.
fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a descriptor we own; it only changes this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// `count` pods created at once on a cluster of network-namespace hosts:
/// a server that is a node too and `agents` agents, each with its own
/// containerd and pod CIDR, next to `count` `ctr run -d` at once spread
/// over the same containerds.
fn across_nodes(agents: usize, count: usize) {
    let mut net = Net::new();
    let t = rk3s_tests::tempdir();
    let server_ns = net.host("s", "10.77.0.11");
    let sdir = t.path().join("s");
    with_busybox(&sdir);
    let server = node_server(
        &server_ns,
        &sdir,
        "10.77.0.11",
        "s",
        &["--kubelet-arg=max-pods=250"],
    );
    let mut nodes = vec![];
    let mut sockets = vec![sdir.join("data/agent/run/containerd/containerd.sock")];
    let mut guards = vec![Containers::of(&sdir.join("data"))];
    for i in 0..agents {
        let name = format!("n{i}");
        let ns = net.host(&name, &format!("10.77.0.{}", 21 + i));
        let dir = t.path().join(&name);
        with_busybox(&dir);
        sockets.push(dir.join("data/agent/run/containerd/containerd.sock"));
        guards.push(Containers::of(&dir.join("data")));
        nodes.push(node_agent(
            &ns,
            &dir,
            &name,
            &server,
            "10.77.0.11",
            &["--kubelet-arg=max-pods=250"],
        ));
    }
    for name in std::iter::once("s".to_string()).chain((0..agents).map(|i| format!("n{i}"))) {
        assert!(
            server.wait_status(&name, "Ready", Duration::from_secs(180)),
            "node {name} never became Ready:\n{}",
            server.log()
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let ctr_lat = ctr_at_once(&sockets, count);

    // The API is on the server host's address: talk to it from there.
    let http = server.admin_http();
    let pids: Vec<u32> = nodes.iter().map(Agent::pid).collect();
    let (pods, total, spread, rss) = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&server_ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let base = "https://10.77.0.11:6443".to_string();
                let running = Arc::new(Running::default());
                let watch = tokio::spawn(follow(http.clone(), base.clone(), running.clone()));
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Burst {
                    each: lat, total, ..
                } = at_once(&http, &base, &running, "across", count).await;
                let mut spread = BTreeMap::new();
                for node in running.node.lock().unwrap().values() {
                    *spread.entry(node.clone()).or_insert(0) += 1;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                let rss: Vec<String> = pids.iter().map(|p| rss_kib(*p).to_string()).collect();
                watch.abort();
                delete_all(&http, &base).await;
                (lat, total, spread, rss)
            })
        })
        .join()
        .unwrap()
    });
    println!(
        "{count} pods at once across {} nodes (per node: {spread:?}):",
        agents + 1
    );
    println!(
        "  ctr run -d, {count} at once   p50 {:7.1}  p99 {:7.1}",
        pct(&ctr_lat, 0.5),
        pct(&ctr_lat, 0.99)
    );
    println!(
        "  pods, {count} at once         p50 {:7.1}  p99 {:7.1}  all Running after {:.1} s  ratio p99 {:.2}x",
        pct(&pods, 0.5),
        pct(&pods, 0.99),
        total.as_secs_f64(),
        pct(&pods, 0.99) / pct(&ctr_lat, 0.99)
    );
    println!("  agents' RSS with the pods running: {}", rss.join("; "));
    drop(guards);
}

async fn one_node() {
    let n: usize = arg("--pods", 30);
    let many: usize = arg("--many", 100);
    let idle_secs: u64 = arg("--idle-secs", 30);
    let t = rk3s_tests::tempdir();
    let sdir = t.path().join("s");
    let adir = t.path().join("a");
    with_busybox(&adir);
    let server = Server::start(&sdir, &["--disable-agent"]);
    let agent = Agent::start(
        &adir,
        "bench",
        &server.url(),
        &server.token_file(),
        &[RUNTIME, "--kubelet-arg=max-pods=250"],
    );
    // Declared after the agent, so it cleans up while containerd runs.
    let _containers = Containers::of(&adir.join("data"));
    assert!(
        server.wait_status("bench", "Ready", Duration::from_secs(120)),
        "the node never became Ready:\n{}",
        agent.log()
    );
    let socket = adir.join("data/agent/run/containerd/containerd.sock");
    // The image is imported by then; give the agent a moment to settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle = rss_kib(agent.pid());

    // 1. ctr run, one after the other, then the same number at once.
    let mut ctr_lat = Vec::new();
    for i in 0..n {
        let id = format!("bench-ctr-{i}");
        let t0 = Instant::now();
        ctr(
            &socket,
            &["run", "-d", "--null-io", IMAGE, &id, "sleep", "3600"],
        );
        ctr_lat.push(t0.elapsed());
    }
    ctr_remove(std::slice::from_ref(&socket), n);
    let ctr_burst = ctr_at_once(std::slice::from_ref(&socket), n);
    // The runtime's floor for a pod: sandbox, pod network and container
    // straight through CRI, one after the other and then at once.
    let cri_dir = t.path().join("cri-logs");
    let cri_seq = cri_pods(&socket, &cri_dir, n, false).await;
    let cri_burst = cri_pods(&socket, &cri_dir, n, true).await;

    let http = server.admin_http();
    let base = server.url();
    let running = Arc::new(Running::default());
    let watch = tokio::spawn(follow(http.clone(), base.clone(), running.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. Pods one after the other.
    let mut seq = Vec::new();
    let mut seq_bound = Vec::new();
    for i in 0..n {
        let name = format!("seq-{i}");
        let t0 = create(&http, &base, &name).await;
        until_running(&running, std::slice::from_ref(&name)).await;
        seq.push(running.at.lock().unwrap()[&name] - t0);
        if let Some(b) = running.bound.lock().unwrap().get(&name) {
            seq_bound.push(*b - t0);
        }
    }
    delete_all(&http, &base).await;

    // 3. A burst.
    let Burst {
        each: burst,
        total: burst_total,
        created: burst_created,
    } = at_once(&http, &base, &running, "burst", n).await;

    // 4. Idle CPU with these pods running.
    let (apid, cpid) = (agent.pid(), containerd_pid(&adir));
    let (a0, c0) = (cpu_secs(apid), cpid.map(cpu_secs).unwrap_or(0.0));
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let a_cpu = (cpu_secs(apid) - a0) / idle_secs as f64 * 100.0;
    let c_cpu = (cpid.map(cpu_secs).unwrap_or(0.0) - c0) / idle_secs as f64 * 100.0;
    let rss_n = rss_kib(apid);
    delete_all(&http, &base).await;

    // 5. RSS with many pods.
    let Burst {
        each: many_each,
        total: many_total,
        created: many_created,
    } = at_once(&http, &base, &running, "many", many).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_many = rss_kib(apid);
    let rss_many_by = rss_by_mapping(apid);
    watch.abort();
    delete_all(&http, &base).await;

    println!("pod start on one node, {n} each (ms):");
    let p50_p99 = |label: String, v: &[Duration], after: &str| {
        println!(
            "  {label:<26}p50 {:7.1}  p99 {:7.1}{after}",
            pct(v, 0.5),
            pct(v, 0.99)
        )
    };
    p50_p99("ctr run -d (baseline)".into(), &ctr_lat, "");
    p50_p99(format!("ctr run -d, {n} at once"), &ctr_burst, "");
    p50_p99(
        "CRI sandbox + container".into(),
        &cri_seq,
        "  (the runtime's floor for a pod)",
    );
    p50_p99(format!("CRI, {n} at once"), &cri_burst, "");
    println!(
        "  pods one at a time        p50 {:7.1}  p99 {:7.1}  ratio p50 {:.2}x of ctr, {:.2}x of CRI",
        pct(&seq, 0.5),
        pct(&seq, 0.99),
        pct(&seq, 0.5) / pct(&ctr_lat, 0.5),
        pct(&seq, 0.5) / pct(&cri_seq, 0.5)
    );
    p50_p99(
        "  of which create → bound".into(),
        &seq_bound,
        "  (the API and the scheduler)",
    );
    println!(
        "  pods in a burst of {n:<3}    p50 {:7.1}  p99 {:7.1}  all Running after {:.1} s (created in {:.1} s)",
        pct(&burst, 0.5),
        pct(&burst, 0.99),
        burst_total.as_secs_f64(),
        burst_created.as_secs_f64()
    );
    println!(
        "  burst ratio p99 {:.2}x of ctr's burst, {:.2}x of CRI's",
        pct(&burst, 0.99) / pct(&ctr_burst, 0.99),
        pct(&burst, 0.99) / pct(&cri_burst, 0.99)
    );
    println!(
        "{many} pods created at once: all Running after {:.1} s (created in {:.1} s; create → Running p50 {:.1} s)",
        many_total.as_secs_f64(),
        many_created.as_secs_f64(),
        pct(&many_each, 0.5) / 1000.0
    );
    println!("agent RSS: {rss_idle} with 0 pods, {rss_n} with {n}, {rss_many} with {many}");
    println!("  with {many} pods, by mapping (MiB): {rss_many_by}");
    println!(
        "idle CPU over {idle_secs} s with {n} pods: agent {a_cpu:.2} %, containerd {c_cpu:.2} % (of one core)"
    );
}
