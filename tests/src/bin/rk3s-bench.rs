//! Registration benchmark: N simulated agents over real websockets on
//! loopback against real `rk3sd server` processes.
//!
//! cargo build --release --workspace
//! target/release/rk3s-bench [--agents 1000] [--steady-secs 30] [--heartbeat-ms 10000]
//!     [--concurrency 128] [--restart 1] [--postgres 1] [--soak-secs 3600 --sample-secs 60]
//!
//! Each simulated agent does what `rk3sd agent` does on the wire: the full
//! registration (token, node password), its node status, heartbeats, and
//! on a lost tunnel the agent's own jittered backoff (`agent::Backoff`),
//! picking servers with the agent's own code (`agent::connect_any` over a
//! `LoadBalancer`: the other server first, a busy one's Retry-After
//! obeyed, a dead one last). An agent counts as
//! up when its first heartbeat is acknowledged: the server has then
//! stored its Node and renewed its Lease.
//!
//! Reports the time until every agent is up (cold start; after a server
//! restart with `--restart`; after killing one of two servers on
//! PostgreSQL with `--postgres`), heartbeat round trip (send ->
//! HeartbeatAck) p50/p99/max at steady state (and per heartbeat interval,
//! with the seconds in which the most heartbeats took over 100 ms), the
//! server's RSS and CPU, and with `--soak-secs` RSS, open fds and CPU
//! sampled over a long run.

use futures_util::{SinkExt, StreamExt};
use rk3s_api::tunnel::{AgentMessage, ServerMessage};
use rk3s_tests::{arg, cpu_secs, open_fds, rss_kib, tempdir, Postgres, Server};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// A heartbeat this slow is listed by when it was sent, so that a stall can
/// be matched with what the server does at that time.
const SLOW: Duration = Duration::from_millis(100);

/// When the bench (and with it the first server) started.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The agent's default `--reconnect-backoff-max`.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Args {
    agents: usize,
    steady: Duration,
    heartbeat: Duration,
    concurrency: usize,
    restart: bool,
    postgres: bool,
    soak: Duration,
    sample: Duration,
}

fn args() -> Args {
    let known = [
        "--agents",
        "--steady-secs",
        "--heartbeat-ms",
        "--concurrency",
        "--restart",
        "--postgres",
        "--soak-secs",
        "--sample-secs",
    ];
    let v: Vec<String> = std::env::args().skip(1).collect();
    if v.chunks(2).any(|p| {
        !known.contains(&p[0].as_str()) || p.get(1).and_then(|x| x.parse::<u64>().ok()).is_none()
    }) {
        eprintln!("usage: rk3s-bench [--agents N] [--steady-secs S] [--heartbeat-ms MS] [--concurrency C] [--restart 0|1] [--postgres 0|1] [--soak-secs S] [--sample-secs S]");
        std::process::exit(2);
    }
    Args {
        agents: arg("--agents", 1000),
        steady: Duration::from_secs(arg("--steady-secs", 30)),
        heartbeat: Duration::from_millis(arg("--heartbeat-ms", 10_000)),
        concurrency: arg("--concurrency", 128),
        restart: arg("--restart", 0) == 1,
        postgres: arg("--postgres", 0) == 1,
        soak: Duration::from_secs(arg("--soak-secs", 0)),
        sample: Duration::from_secs(arg("--sample-secs", 60)),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the simulated agents share with the bench.
#[derive(Default)]
struct Fleet {
    /// Agents whose current tunnel has had a heartbeat acknowledged.
    up: AtomicUsize,
    /// Registrations tried, one per server.
    attempts: AtomicUsize,
    /// Rounds over the servers that ended without a tunnel.
    failed_attempts: AtomicUsize,
    last_error: Mutex<String>,
    measuring: AtomicBool,
    rtts: Mutex<Vec<Duration>>,
    /// Heartbeats over [`SLOW`]: when each was sent, and its round trip.
    slow: Mutex<Vec<(Instant, Duration)>>,
    /// Agents that reached each server (index into the URL list) last.
    on_server: [AtomicUsize; 2],
}

impl Fleet {
    fn take_rtts(&self) -> Vec<Duration> {
        let mut v = std::mem::take(&mut *self.rtts.lock().unwrap());
        v.sort();
        v
    }
}

struct AgentSpec {
    index: usize,
    urls: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    secret: String,
    heartbeat: Duration,
}

/// One simulated agent: connect (the first time under `first_permit`),
/// report, heartbeat, reconnect with the agent's backoff; until `stop`.
async fn agent(
    a: AgentSpec,
    fleet: Arc<Fleet>,
    first_permit: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let name = format!("bench-{:05}", a.index);
    let password = rk3sd::credentials::nodepassword::generate();
    let mut backoff = rk3sd::agent::Backoff::new(BACKOFF_MAX);
    let mut permit = Some(first_permit.acquire_owned().await.unwrap());
    // Servers picked as the agent picks them: its load balancer's order,
    // busy servers' Retry-After, failed servers last.
    let lb = rk3sd::agent::loadbalancer::LoadBalancer::in_memory(
        a.urls
            .iter()
            .map(|u| u.trim_start_matches("https://").to_string())
            .collect(),
        &name,
    );
    let creds = rk3sd::agent::registration::Credentials {
        tls: a.tls.clone(),
        secret: &a.secret,
        name: &name,
        password: &password,
    };
    let ips = ["127.0.0.1".to_string()];
    let offset = a.heartbeat.mul_f64((a.index as f64 * 0.618_033_988) % 1.0);
    while !*stop.borrow() {
        let (url, ws) = rk3sd::agent::registration::connect_any(&lb, &creds, &ips, |_| {
            fleet.attempts.fetch_add(1, Ordering::Relaxed);
        })
        .await;
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(e) => {
                fleet.failed_attempts.fetch_add(1, Ordering::Relaxed);
                *fleet.last_error.lock().unwrap() = e.to_string();
                // As the agent: a server shedding load says when to come back.
                let wait = e.retry_after().unwrap_or_else(|| backoff.step());
                tokio::select! { _ = stop.changed() => {}, _ = tokio::time::sleep(wait) => {} }
                continue;
            }
        };
        lb.connected(&url);
        let server = a.urls.iter().position(|u| *u == url).unwrap_or(0);
        let started = Instant::now();
        let info = rk3sd::host::nodeinfo::collect(vec!["127.0.0.1".into()], Default::default());
        let status = serde_json::to_string(&AgentMessage::NodeStatus {
            info: Box::new(info),
        })
        .unwrap();
        let mut seq = 0u64;
        let mut sent: std::collections::HashMap<u64, Instant> = Default::default();
        let mut up = false;
        let beat = |seq: u64| {
            Message::text(serde_json::to_string(&AgentMessage::Heartbeat { seq }).unwrap())
        };
        // The first heartbeat right behind the status: its ack says both
        // were stored.
        seq += 1;
        sent.insert(seq, Instant::now());
        let ok = ws.send(Message::text(status)).await.is_ok() && ws.send(beat(seq)).await.is_ok();
        if ok {
            let (mut tx, mut rx) = ws.split();
            // Spread over the interval, as real agents drift apart.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, a.heartbeat);
            // Pings as the agent sends them: on a tunnel quiet for half
            // the keepalive.
            let keepalive = rk3s_api::tunnel::keepalive_for(a.heartbeat);
            let mut ping = tokio::time::interval(keepalive / 5);
            let (mut last_rx, mut last_ping) = (Instant::now(), Instant::now());
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = ping.tick() => {
                        if last_rx.elapsed() > keepalive {
                            break;
                        }
                        if last_rx.elapsed() >= keepalive / 2 && last_ping.elapsed() >= keepalive / 2 {
                            last_ping = Instant::now();
                            if tx.send(Message::Ping(Default::default())).await.is_err() { break; }
                        }
                    }
                    _ = tick.tick() => {
                        seq += 1;
                        sent.insert(seq, Instant::now());
                        if tx.send(beat(seq)).await.is_err() { break; }
                    }
                    f = rx.next() => match f {
                        Some(Ok(Message::Text(t))) => {
                            last_rx = Instant::now();
                            let Ok(ServerMessage::HeartbeatAck { seq }) = serde_json::from_str(t.as_str()) else { continue };
                            let Some(t0) = sent.remove(&seq) else { continue };
                            if !up {
                                up = true;
                                permit = None;
                                fleet.up.fetch_add(1, Ordering::Relaxed);
                                fleet.on_server[server.min(1)].fetch_add(1, Ordering::Relaxed);
                            } else if fleet.measuring.load(Ordering::Relaxed) {
                                let rtt = t0.elapsed();
                                fleet.rtts.lock().unwrap().push(rtt);
                                if rtt > SLOW {
                                    fleet.slow.lock().unwrap().push((t0, rtt));
                                }
                            }
                        }
                        Some(Ok(_)) => last_rx = Instant::now(),
                        _ => break,
                    }
                }
            }
        }
        if up {
            fleet.up.fetch_sub(1, Ordering::Relaxed);
            fleet.on_server[server.min(1)].fetch_sub(1, Ordering::Relaxed);
        }
        drop(permit.take());
        // As the agent: a session that lived a while earns a fast retry;
        // the next attempt goes to another server first.
        lb.failed(&url);
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
        tokio::select! { _ = stop.changed() => {}, _ = tokio::time::sleep(backoff.step()) => {} }
    }
}

/// Wait (bounded) until `want` agents are up; the time it took, or None.
async fn all_up(fleet: &Fleet, want: usize, since: Instant, limit: Duration) -> Option<Duration> {
    loop {
        if fleet.up.load(Ordering::Relaxed) >= want {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How `all_up` ended: after how long, or how many made it.
fn report_up(fleet: &Fleet, what: &str, took: Option<Duration>, limit: Duration) {
    match took {
        Some(d) => println!("{what} after {:.2} s", d.as_secs_f64()),
        None => println!(
            "{what}: not reached, only {} up after {} s (last error: {})",
            fleet.up.load(Ordering::Relaxed),
            limit.as_secs(),
            fleet.last_error.lock().unwrap()
        ),
    }
}

/// Heartbeats over `steady`, with the CPU the servers used meanwhile.
async fn steady_state(
    fleet: &Fleet,
    pids: &[u32],
    steady: Duration,
    heartbeat: Duration,
    label: &str,
) {
    fleet.take_rtts();
    fleet.slow.lock().unwrap().clear();
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    fleet.measuring.store(true, Ordering::Relaxed);
    // One heartbeat interval at a time, so a transient (the tail of a
    // registration storm) shows apart from the state it settles into.
    let mut v = Vec::new();
    let mut windows = Vec::new();
    let started = Instant::now();
    while started.elapsed() < steady {
        tokio::time::sleep(heartbeat.min(steady - started.elapsed())).await;
        let w = fleet.take_rtts();
        windows.push(format!(
            "{:.0}/{:.0}",
            ms(pct(&w, 0.99)),
            ms(w.last().copied().unwrap_or_default())
        ));
        v.extend(w);
    }
    fleet.measuring.store(false, Ordering::Relaxed);
    report_slow(fleet);
    let cpu = (pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu0) / steady.as_secs_f64();
    v.sort();
    println!(
        "{label}: heartbeat every {} ms, {} s, {} samples",
        heartbeat.as_millis(),
        steady.as_secs(),
        v.len()
    );
    println!(
        "  heartbeat RTT p50 / p99 / max: {:.2} / {:.2} / {:.2} ms",
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default())
    );
    println!(
        "  p99/max per {} s window (ms): {}",
        heartbeat.as_secs(),
        windows.join(", ")
    );
    println!("  server CPU: {:.1} % of one core", cpu * 100.0);
    for p in pids {
        let (rss, hwm) = rss_kib(*p);
        println!(
            "  server {p} RSS: {:.1} MiB (peak {:.1} MiB), {:.1} KiB per agent",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            rss as f64 / fleet.up.load(Ordering::Relaxed).max(1) as f64
        );
    }
}

/// The seconds (since the bench started) in which the most heartbeats over
/// [`SLOW`] were sent: a resync or a compaction shows as the same second
/// in every run, a storm's tail as the first seconds.
fn report_slow(fleet: &Fleet) {
    let slow = std::mem::take(&mut *fleet.slow.lock().unwrap());
    if slow.is_empty() {
        return;
    }
    let epoch = *EPOCH.get().expect("set at start");
    let mut by_sec = std::collections::BTreeMap::<u64, (usize, Duration)>::new();
    for (sent, rtt) in &slow {
        let e = by_sec
            .entry(sent.duration_since(epoch).as_secs())
            .or_default();
        e.0 += 1;
        e.1 = e.1.max(*rtt);
    }
    let mut worst: Vec<_> = by_sec.into_iter().collect();
    worst.sort_by_key(|w| std::cmp::Reverse(w.1 .0));
    worst.truncate(8);
    worst.sort();
    let list: Vec<String> = worst
        .iter()
        .map(|(s, (n, max))| format!("{s} s: {n} (max {:.0} ms)", ms(*max)))
        .collect();
    println!(
        "  heartbeats over {} ms: {}, most in second (since start) {}",
        SLOW.as_millis(),
        slow.len(),
        list.join(", ")
    );
}

fn main() {
    EPOCH.get_or_init(Instant::now);
    rk3sd::host::process::raise_nofile_limit();
    let a = args();
    let dir = tempdir();
    let hb = format!("{}ms", a.heartbeat.as_millis());
    let flags = [
        "--disable-agent",
        "--heartbeat-interval",
        &hb,
        "--node-monitor-grace-period",
        "40s",
        "--node-monitor-period",
        "5s",
        // Room for every node's /24 (K3s's default /16 holds 256), as an
        // operator of this many nodes would give.
        "--cluster-cidr",
        "10.64.0.0/10",
    ];
    let pg = a.postgres.then(Postgres::start);
    let url = pg.as_ref().map(|p| p.url("bench"));
    let env: Vec<(&str, &str)> = match &url {
        Some(u) => vec![
            ("RK3S_DATASTORE_ENDPOINT", u.as_str()),
            ("RK3S_TOKEN", "bench-cluster-secret-0123"),
        ],
        None => vec![],
    };
    let mut servers = vec![Server::start_with_env(&dir.path().join("s1"), &flags, &env)];
    if a.postgres {
        let mut f2 = flags.to_vec();
        f2.extend(["--node-name", "server-2"]);
        servers.push(Server::start_with_env(&dir.path().join("s2"), &f2, &env));
    }
    let idle: Vec<u64> = servers.iter().map(|s| rss_kib(s.pid()).0).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tls =
        Arc::new(rk3sd::credentials::certs::client_config_pinned(&servers[0].ca_pem()).unwrap());
    let secret = servers[0].token().rsplit(':').next().unwrap().to_string();
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let limit = Duration::from_secs(300);
    rt.block_on(async {
        let start = Instant::now();
        let cpu0: f64 = servers.iter().map(|s| cpu_secs(s.pid())).sum();
        for index in 0..a.agents {
            let spec = AgentSpec {
                index,
                urls: urls.clone(),
                tls: tls.clone(),
                secret: secret.clone(),
                heartbeat: a.heartbeat,
            };
            tokio::spawn(agent(spec, fleet.clone(), sem.clone(), stop_rx.clone()));
        }
        let cold = all_up(&fleet, a.agents, start, limit).await;
        let cpu = servers.iter().map(|s| cpu_secs(s.pid())).sum::<f64>() - cpu0;
        println!(
            "agents: {}, servers: {} ({}), first-connection concurrency {}",
            a.agents,
            servers.len(),
            if a.postgres { "PostgreSQL" } else { "SQLite" },
            a.concurrency
        );
        report_up(&fleet, "cold start: all up", cold, limit);
        println!("  server CPU {cpu:.1} s");
        println!(
            "  connection attempts: {}, rounds without a tunnel: {}",
            fleet.attempts.load(Ordering::Relaxed),
            fleet.failed_attempts.load(Ordering::Relaxed)
        );
        let stored = servers[0].ctl(&["status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&stored.stdout).unwrap_or_default();
        println!("  nodes stored: {}", v["node_count"]);
        for (s, rss) in servers.iter().zip(&idle) {
            println!(
                "  server {} RSS before agents: {:.1} MiB",
                s.pid(),
                *rss as f64 / 1024.0
            );
        }
        let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
        steady_state(&fleet, &pids, a.steady, a.heartbeat, "steady state").await;

        if a.restart {
            let attempts0 = fleet.attempts.load(Ordering::Relaxed);
            let failed0 = fleet.failed_attempts.load(Ordering::Relaxed);
            let t = Instant::now();
            let code = servers[0].stop();
            let stopped = t.elapsed();
            if code.is_none() {
                servers[0].kill();
            }
            let t = Instant::now();
            servers[0].restart();
            let serving = t.elapsed();
            let bench0 = cpu_secs(std::process::id());
            let back = all_up(&fleet, a.agents, t, limit).await;
            println!(
                "  CPU until all up: server {:.1} s, the bench's agents {:.1} s",
                cpu_secs(servers[0].pid()),
                cpu_secs(std::process::id()) - bench0
            );
            println!(
                "server restart: stopped in {:.2} s (exit {:?}), serving again {:.2} s after start",
                stopped.as_secs_f64(),
                code,
                serving.as_secs_f64()
            );
            report_up(
                &fleet,
                "  all up again, counted from the restart,",
                back,
                limit,
            );
            println!(
                "  connection attempts: {}, rounds without a tunnel: {} (last error: {})",
                fleet.attempts.load(Ordering::Relaxed) - attempts0,
                fleet.failed_attempts.load(Ordering::Relaxed) - failed0,
                fleet.last_error.lock().unwrap()
            );
            let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
            steady_state(&fleet, &pids, a.steady, a.heartbeat, "after the restart").await;
        }

        if a.postgres {
            let moved = fleet.on_server[1].load(Ordering::Relaxed);
            let t = Instant::now();
            servers[1].kill();
            let back = all_up(&fleet, a.agents, t, limit).await;
            println!("server 2 killed with {moved} agents on it:");
            report_up(&fleet, "  all up on server 1", back, limit);
            // Past a grace period, from the survivor's view: none Unknown.
            tokio::time::sleep(Duration::from_secs(45)).await;
            let o = servers[0].ctl(&["node", "list", "-o", "json"]);
            let nodes: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let list = nodes.as_array().cloned().unwrap_or_default();
            let unknown = list.iter().filter(|n| n["status"] != "Ready").count();
            println!("  45 s later: {} nodes, {} not Ready", list.len(), unknown);
            let pids = vec![servers[0].pid()];
            steady_state(&fleet, &pids, a.steady, a.heartbeat, "one server left").await;
        }

        if !a.soak.is_zero() {
            let pid = servers[0].pid();
            let t = Instant::now();
            let (rss0, _) = rss_kib(pid);
            let fds0 = open_fds(pid);
            let mut cpu_prev = cpu_secs(pid);
            println!(
                "soak: {} s, a sample every {} s",
                a.soak.as_secs(),
                a.sample.as_secs()
            );
            println!(
                "  {:>6} {:>10} {:>8} {:>8} {:>10} {:>6}",
                "secs", "RSS MiB", "fds", "CPU %", "p99 ms", "up"
            );
            fleet.take_rtts();
            fleet.measuring.store(true, Ordering::Relaxed);
            while t.elapsed() < a.soak {
                tokio::time::sleep(a.sample.min(a.soak)).await;
                let cpu = cpu_secs(pid);
                let v = fleet.take_rtts();
                // Not reported in a soak; kept from growing for an hour.
                fleet.slow.lock().unwrap().clear();
                println!(
                    "  {:>6} {:>10.1} {:>8} {:>8.1} {:>10.2} {:>6}",
                    t.elapsed().as_secs(),
                    rss_kib(pid).0 as f64 / 1024.0,
                    open_fds(pid),
                    (cpu - cpu_prev) / a.sample.as_secs_f64() * 100.0,
                    ms(pct(&v, 0.99)),
                    fleet.up.load(Ordering::Relaxed)
                );
                cpu_prev = cpu;
            }
            fleet.measuring.store(false, Ordering::Relaxed);
            let (rss1, _) = rss_kib(pid);
            println!(
                "  RSS growth: {:+.1} MiB, open fds: {} -> {}",
                (rss1 as f64 - rss0 as f64) / 1024.0,
                fds0,
                open_fds(pid)
            );
        }
        let _ = stop_tx.send(true);
    });
    drop(servers);
    drop(pg);
}
