//! Failover benchmark across network namespaces (needs root, iproute2,
//! haproxy and PostgreSQL, as the HA test does).
//!
//! cargo build --release --workspace
//! target/release/rk3s-habench [--agents 30]
//!
//! Three servers on PostgreSQL behind haproxy, `--agents` agents spread
//! over five agent hosts, production timings (heartbeat 10 s, so a silent
//! tunnel is given up after 6 s; grace 40 s). Then:
//! 1. SIGKILL the server with the most agents: per-agent time from the kill
//!    to its tunnel being up on another server;
//! 2. after it is back, cut the cable of the server with the most agents:
//!    the same, from the cut.
//!
//! Times come from the agents' own log lines ("registered; tunnel up").

use chrono::{DateTime, Utc};
use rk3s_tests::netns::{haproxy, server_ip, start_ha_server, Net, LB_IP};
use rk3s_tests::{arg, wait_for, Agent, Postgres, Server};
use std::time::Duration;

const SECRET: &str = "habench-cluster-secret-0815";

fn server_of(a: &Agent) -> Option<String> {
    let s = a.status()?;
    (s["registration"] == "registered")
        .then(|| s["connected_server"].as_str().unwrap_or("").to_string())
}

/// Index (0-based) of the server holding the most tunnels.
fn busiest(agents: &[Agent]) -> usize {
    let mut count = [0usize; 3];
    for a in agents {
        if let Some(s) = server_of(a) {
            for (i, c) in count.iter_mut().enumerate() {
                if s.contains(&server_ip(i + 1)) {
                    *c += 1;
                }
            }
        }
    }
    (0..3).max_by_key(|&i| count[i]).unwrap()
}

/// Seconds from `since` to the first tunnel-up line after it, per agent on `ip`.
fn failover(agents: &[&Agent], since: DateTime<Utc>, ip: &str) -> Vec<f64> {
    let done = wait_for(Duration::from_secs(60), || {
        let mut out = Vec::new();
        for a in agents {
            let t = a
                .log()
                .lines()
                .filter(|l| l.contains("registered; tunnel up"))
                .find_map(|l| {
                    let ts = DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok()?;
                    (ts > since && !l.contains(ip))
                        .then(|| (ts.with_timezone(&Utc) - since).as_seconds_f64())
                })?;
            out.push(t);
        }
        Some(out)
    });
    done.expect("every agent must fail over within 60 s")
}

fn report(what: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what}: {} agents moved; p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        v.len(),
        p(0.5),
        p(0.99),
        v[v.len() - 1]
    );
}

fn main() {
    let n = arg("--agents", 30);
    let mut net = Net::new();
    let t = rk3s_tests::tempdir();
    let hosts = net.ha_hosts(5);
    let (ns_pg, ns_lb, ns_s, ns_a) = (&hosts.pg, &hosts.lb, &hosts.servers, &hosts.agents);
    let pg = Postgres::start_in(Some(ns_pg), "10.77.0.2");
    let url = pg.url("kubernetes");
    // Production timings except the leader lease, which only matters for
    // how fast the Endpoints follow, not for agents.
    let defaults = ["--heartbeat-interval", "10s"];
    let mut servers: Vec<Server> = (1..=3)
        .map(|i| {
            start_ha_server(
                &ns_s[i - 1],
                &t.path().join(format!("s{i}")),
                i,
                &url,
                SECRET,
                &defaults,
            )
        })
        .collect();
    let _lb = haproxy(&net, ns_lb, t.path(), 3);
    let token_file = servers[0].token_file();
    let agents: Vec<Agent> = (0..n)
        .map(|i| {
            let name = format!("bench-{i:03}");
            Agent::start_in(
                Some(&ns_a[i % ns_a.len()]),
                &t.path().join(&name),
                &name,
                vec![
                    "--server".into(),
                    format!("https://{LB_IP}:6443"),
                    "--token-file".into(),
                    token_file.display().to_string(),
                    "--node-name".into(),
                    name.clone(),
                    "--heartbeat-interval".into(),
                    "10s".into(),
                    "--reconnect-backoff-max".into(),
                    "30s".into(),
                ],
                &[],
            )
        })
        .collect();
    for a in &agents {
        assert!(
            a.wait_registration("registered", Duration::from_secs(60)),
            "{}",
            a.log()
        );
    }
    println!("{n} agents registered through haproxy at {LB_IP}:6443");

    // Take the busiest server out with `event`; report how its agents move.
    let measure = |what: &str, event: &mut dyn FnMut(usize)| -> usize {
        let i = busiest(&agents);
        let ip = server_ip(i + 1);
        let victims: Vec<&Agent> = agents
            .iter()
            .filter(|a| server_of(a).is_some_and(|s| s.contains(&ip)))
            .collect();
        let at = Utc::now();
        event(i);
        report(
            &format!("failover after {what} s{}", i + 1),
            failover(&victims, at, &ip),
        );
        i
    };
    let k = measure("SIGKILL of", &mut |i| servers[i].kill());
    servers[k].restart();
    std::thread::sleep(Duration::from_secs(3));
    let c = measure("cutting the cable of", &mut |i| net.link(&ns_s[i], false));
    net.link(&ns_s[c], true);
}
