//! Registration benchmark: N simulated agents over real websockets on
//! loopback against a real `rk3sd server` process.
//!
//! cargo build --release --workspace
//! target/release/rk3s-bench [--agents 1000] [--steady-secs 30] [--heartbeat-ms 10000]
//!
//! Reports: time until every agent is registered (tunnel up and its Node
//! stored), heartbeat round trip (send -> HeartbeatAck) p50/p99 at steady
//! state, and the server's RSS with all agents connected.

use futures_util::{SinkExt, StreamExt};
use rk3s_api::tunnel::{AgentMessage, ServerMessage};
use rk3s_tests::{tempdir, wait_for, Server};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    agents: usize,
    steady: Duration,
    heartbeat: Duration,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        agents: 1000,
        steady: Duration::from_secs(30),
        heartbeat: Duration::from_secs(10),
        concurrency: 128,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).and_then(|s| s.parse::<u64>().ok());
        match (v[i].as_str(), val) {
            ("--agents", Some(n)) => a.agents = n as usize,
            ("--steady-secs", Some(n)) => a.steady = Duration::from_secs(n),
            ("--heartbeat-ms", Some(n)) => a.heartbeat = Duration::from_millis(n),
            ("--concurrency", Some(n)) => a.concurrency = n as usize,
            _ => {
                eprintln!("usage: rk3s-bench [--agents N] [--steady-secs S] [--heartbeat-ms MS] [--concurrency C]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    rk3sd::raise_nofile_limit();
    let a = args();
    let dir = tempdir();
    let hb = format!("{}ms", a.heartbeat.as_millis());
    let server = Server::start(
        &dir.path().join("server"),
        &[
            "--disable-agent",
            "--heartbeat-interval",
            &hb,
            "--node-monitor-grace-period",
            "40s",
            "--node-monitor-period",
            "5s",
        ],
    );
    let (idle_rss, _) = rss_kib(server.pid());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tls = Arc::new(rk3sd::certs::client_config_pinned(&server.ca_pem()).unwrap());
    let secret = server.token().rsplit(':').next().unwrap().to_string();
    let url = server.url();
    let rtts: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = tokio_util_stop();
    let start = Instant::now();
    let (reg_tx, mut reg_rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    rt.block_on(async {
        for i in 0..a.agents {
            let (tls, secret, url, rtts, measuring, stop, reg_tx, sem) =
                (tls.clone(), secret.clone(), url.clone(), rtts.clone(), measuring.clone(), stop.clone(), reg_tx.clone(), sem.clone());
            let hb_every = a.heartbeat;
            tokio::spawn(async move {
                let name = format!("bench-{i:05}");
                let password = rk3sd::nodepassword::generate();
                let permit = sem.acquire_owned().await.unwrap();
                let mut ws = None;
                let mut last_err = String::new();
                for _ in 0..5 {
                    match rk3sd::agent::connect_tunnel(&url, tls.clone(), &secret, &name, &password, &["127.0.0.1".to_string()]).await {
                        Ok(w) => {
                            ws = Some(w);
                            break;
                        }
                        Err(e) => {
                            last_err = e.to_string();
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let Some(mut ws) = ws else {
                    let _ = reg_tx.send(Err(last_err));
                    return;
                };
                let info = rk3sd::nodeinfo::collect(vec!["127.0.0.1".into()], Default::default());
                let status = serde_json::to_string(&AgentMessage::NodeStatus { info: Box::new(info) }).unwrap();
                if ws.send(Message::text(status)).await.is_err() {
                    let _ = reg_tx.send(Err("send failed".into()));
                    return;
                }
                drop(permit);
                let _ = reg_tx.send(Ok(start.elapsed()));
                let (mut tx, mut rx) = ws.split();
                // Spread heartbeats over the interval, as real agents drift apart.
                let offset = hb_every.mul_f64((i as f64 * 0.618_033_988) % 1.0);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, hb_every);
                let mut sent: std::collections::HashMap<u64, Instant> = Default::default();
                let mut seq = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        _ = tick.tick() => {
                            seq += 1;
                            sent.insert(seq, Instant::now());
                            let m = serde_json::to_string(&AgentMessage::Heartbeat { seq }).unwrap();
                            if tx.send(Message::text(m)).await.is_err() { break; }
                        }
                        f = rx.next() => match f {
                            Some(Ok(Message::Text(t))) => {
                                if let Ok(ServerMessage::HeartbeatAck { seq }) = serde_json::from_str(t.as_str()) {
                                    if let Some(t0) = sent.remove(&seq) {
                                        if measuring.load(std::sync::atomic::Ordering::Relaxed) {
                                            rtts.lock().unwrap().push(t0.elapsed());
                                        }
                                    }
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                }
            });
        }
        drop(reg_tx);
        let mut ok = 0;
        let mut failed = Vec::new();
        let mut last = Duration::ZERO;
        // Each agent reports once (it keeps its sender while it runs).
        for _ in 0..a.agents {
            let Some(r) = reg_rx.recv().await else { break };
            match r {
                Ok(t) => {
                    ok += 1;
                    last = last.max(t);
                }
                Err(e) => failed.push(e),
            }
        }
        let tunnels_up = last;
        // Registered = the server stored every Node.
        let all = wait_for(Duration::from_secs(120), || {
            let o = server.ctl(&["status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (v["node_count"].as_u64()? as usize >= ok).then(|| start.elapsed())
        });
        let registered = all.expect("server did not store every node within 120 s");
        println!("agents:                 {} ({} failed{})", a.agents, failed.len(), failed.first().map(|e| format!(": {e}")).unwrap_or_default());
        println!("all tunnels up after:   {:.2} s", tunnels_up.as_secs_f64());
        println!("all nodes stored after: {:.2} s", registered.as_secs_f64());
        measuring.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(a.steady).await;
        measuring.store(false, std::sync::atomic::Ordering::Relaxed);
        let (rss, hwm) = rss_kib(server.pid());
        let mut v = rtts.lock().unwrap().clone();
        v.sort();
        println!("heartbeat interval:     {} ms, steady state {} s, {} samples", a.heartbeat.as_millis(), a.steady.as_secs(), v.len());
        println!("heartbeat RTT p50:      {:.2} ms", pct(&v, 0.50).as_secs_f64() * 1000.0);
        println!("heartbeat RTT p99:      {:.2} ms", pct(&v, 0.99).as_secs_f64() * 1000.0);
        println!("heartbeat RTT max:      {:.2} ms", v.last().copied().unwrap_or_default().as_secs_f64() * 1000.0);
        println!("server RSS idle:        {:.1} MiB", idle_rss as f64 / 1024.0);
        println!("server RSS connected:   {:.1} MiB (peak {:.1} MiB)", rss as f64 / 1024.0, hwm as f64 / 1024.0);
        stop.notify_waiters();
    });
}

fn tokio_util_stop() -> Arc<tokio::sync::Notify> {
    Arc::new(tokio::sync::Notify::new())
}
