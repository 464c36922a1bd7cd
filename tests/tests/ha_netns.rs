//! High availability across real hosts: network namespaces made by the
//! test (one PostgreSQL host, one haproxy host as the fixed registration
//! address, three servers, six agents) on a private bridge.
//!
//! Scenarios, in one cluster: everyone joins through the fixed address;
//! the leader is killed (its agents move, leadership and Endpoints follow,
//! a new agent still joins); another server's cable is cut; PostgreSQL stops and comes
//! back (tunnels stay, readyz says 503, no acknowledged write is lost); an
//! agent restarts while the fixed address is down; a server with another
//! token is refused. A watcher on server 3 checks throughout that no agent
//! node ever goes Unknown (grace 40 s, as in production).

use rk3s_tests::netns::{haproxy, server_ip, start_ha_server, Net, LB_IP};
use rk3s_tests::{bin, ctl, wait_for, Agent, Postgres, Server};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LB: &str = LB_IP;
const SECRET: &str = "ha-netns-cluster-secret-4711";

fn start_server(net_ns: &str, dir: &Path, i: usize, pg_url: &str) -> Server {
    start_ha_server(
        net_ns,
        dir,
        i,
        pg_url,
        SECRET,
        &[
            "--node-monitor-grace-period",
            "40s",
            "--node-monitor-period",
            "1s",
            "--leader-elect-lease-duration",
            "3s",
            "--leader-elect-retry-period",
            "500ms",
            "--heartbeat-interval",
            "2s",
        ],
    )
}

/// The server an agent's tunnel is on, if registered.
fn connected(a: &Agent) -> Option<String> {
    let s = a.status()?;
    (s["registration"] == "registered")
        .then(|| s["connected_server"].as_str().unwrap_or("").to_string())
}

fn status(s: &Server) -> Option<Value> {
    let o = s.ctl(&["status", "-o", "json"]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn live_servers(s: &Server) -> Vec<String> {
    status(s)
        .map(|v| {
            v["servers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn kubectl(net: &Net, ns: &str, s: &Server, args: &[&str]) -> std::process::Output {
    let kc = s.kubeconfig().display().to_string();
    let cache = s.dir.join("kcache").display().to_string();
    let k = rk3s_tests::kubectl(None).display().to_string();
    let mut full = vec![
        k.as_str(),
        "--kubeconfig",
        &kc,
        "--cache-dir",
        &cache,
        "--request-timeout",
        "5s",
    ];
    full.extend_from_slice(args);
    net.exec(ns, &full).output().unwrap()
}

fn endpoint_ips(net: &Net, ns: &str, s: &Server) -> Vec<String> {
    let o = kubectl(
        net,
        ns,
        s,
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ],
    );
    let mut ips: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    ips.sort();
    ips
}

/// Whether `watcher` sees the leader lease move off server `dead` (0-based).
fn leadership_moves_off(watcher: &Server, dead: usize) -> bool {
    let dead = format!("s{}", dead + 1);
    wait_for(Duration::from_secs(15), || {
        let l = status(watcher)?["leader"].as_str()?.to_string();
        (!l.is_empty() && l != dead).then_some(())
    })
    .is_some()
}

/// Agents whose tunnel is on the server at `ip`.
fn on<'a>(agents: &'a [Agent], ip: &str) -> Vec<&'a Agent> {
    agents
        .iter()
        .filter(|a| connected(a).is_some_and(|c| c.contains(ip)))
        .collect()
}

/// Wait until every agent in `agents` is registered somewhere other than
/// `not_on`; returns the seconds each needed.
fn wait_moved(agents: &[&Agent], not_on: &str, timeout: Duration) -> Vec<f64> {
    let start = Instant::now();
    let mut took = BTreeMap::new();
    wait_for(timeout, || {
        for a in agents {
            if took.contains_key(&a.name) {
                continue;
            }
            if connected(a).is_some_and(|c| !c.is_empty() && !c.contains(not_on)) {
                took.insert(a.name.clone(), start.elapsed().as_secs_f64());
            }
        }
        (took.len() == agents.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("agents did not leave {not_on} within {timeout:?}: moved {took:?}"));
    took.into_values().collect()
}

#[test]
fn ha_cluster_across_network_namespaces() {
    let mut net = Net::new();
    let t = rk3s_tests::tempdir();
    let hosts = net.ha_hosts(6);
    let (ns_pg, ns_lb, ns_s, ns_a) = (&hosts.pg, &hosts.lb, &hosts.servers, &hosts.agents);
    let pg = Postgres::start_in(Some(ns_pg), "10.77.0.2");
    let url = pg.url("kubernetes");
    let mut servers: Vec<Server> = (1..=3)
        .map(|i| start_server(&ns_s[i - 1], &t.path().join(format!("s{i}")), i, &url))
        .collect();
    let ca = servers[0].ca_pem();
    for s in &servers[1..] {
        assert_eq!(s.ca_pem(), ca, "servers share one CA");
    }
    let mut lb = haproxy(&net, ns_lb, t.path(), 3);

    let fixed = format!("https://{LB}:6443");
    let token_file = servers[0].token_file();
    let start_agent = |i: usize| {
        let name = format!("a{i}");
        Agent::start_in(
            Some(&ns_a[i - 1]),
            &t.path().join(&name),
            &name,
            vec![
                "--server".into(),
                fixed.clone(),
                "--token-file".into(),
                token_file.display().to_string(),
                "--node-name".into(),
                name.clone(),
                "--heartbeat-interval".into(),
                "2s".into(),
            ],
            &[],
        )
    };
    let mut agents: Vec<Agent> = (1..=5).map(start_agent).collect();
    for a in &agents {
        assert!(
            a.wait_registration("registered", Duration::from_secs(30)),
            "{} did not join through the fixed address:\n{}",
            a.name,
            a.log()
        );
    }
    // Every server sees every node Ready, and each agent's tunnel server.
    let all: BTreeSet<String> = ["s1", "s2", "s3", "a1", "a2", "a3", "a4", "a5"]
        .map(String::from)
        .into();
    for s in &servers {
        let ok = wait_for(Duration::from_secs(30), || {
            let nodes = s.nodes();
            let ready: BTreeSet<String> = nodes
                .iter()
                .filter(|n| n["status"] == "Ready" && n["connected"] != "")
                .map(|n| n["name"].as_str().unwrap().to_string())
                .collect();
            (ready == all).then_some(())
        });
        assert!(
            ok.is_some(),
            "not all nodes Ready with a tunnel on {:?}: {:?}",
            s.netns,
            s.nodes()
        );
    }
    let appliers: Vec<&Option<String>> = servers
        .iter()
        .filter(|s| s.log().contains("applied manifest"))
        .map(|s| &s.netns)
        .collect();
    assert_eq!(
        appliers.len(),
        1,
        "only the leader applies manifests: {appliers:?}"
    );
    let three: Vec<String> = (1..=3).map(|i| format!("{}:6443", server_ip(i))).collect();
    assert!(
        wait_for(Duration::from_secs(10), || (live_servers(&servers[2])
            == three)
            .then_some(()))
        .is_some(),
        "live servers: {:?}",
        live_servers(&servers[2])
    );
    // Agents learned and saved the list, with the fixed address it came from.
    for a in &agents {
        assert!(
            wait_for(Duration::from_secs(10), || {
                let text = std::fs::read_to_string(
                    a.dir.join("data/agent/etc/rk3s-agent-load-balancer.json"),
                )
                .ok()?;
                let v: Value = serde_json::from_str(&text).ok()?;
                (v["ServerURL"] == fixed.as_str()
                    && v["ServerAddresses"] == serde_json::json!(three))
                .then_some(())
            })
            .is_some(),
            "{} did not save the server list",
            a.name
        );
    }
    // GET /v1-rk3s/apiservers through the fixed address (token required).
    let auth = t.path().join("auth.hdr");
    {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("node:{SECRET}"));
        std::fs::write(&auth, format!("Authorization: Basic {b}\n")).unwrap();
    }
    let (code, body) = net.curl(
        &ns_a[0],
        &format!("{fixed}/v1-rk3s/apiservers"),
        Some(&auth),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Vec<String>>(&body).unwrap(), three);
    let (code, _) = net.curl(&ns_a[0], &format!("{fixed}/v1-rk3s/apiservers"), None);
    assert_eq!(code, 401);
    // kubectl sees the three servers in the kubernetes Endpoints.
    assert_eq!(
        endpoint_ips(&net, &ns_s[2], &servers[2]),
        vec![server_ip(1), server_ip(2), server_ip(3)]
    );

    // Roles: the leader is killed if it holds tunnels (haproxy's round
    // robin usually gives it some), else the busiest server is, and the
    // leader is killed after it; checks go through a server that is neither.
    let leader = wait_for(Duration::from_secs(10), || {
        let l = status(&servers[0])?["leader"].as_str()?.to_string();
        l.strip_prefix('s')?.parse::<usize>().ok()
    })
    .expect("a leader is elected")
        - 1;
    let load = |i: usize| on(&agents, &server_ip(i + 1)).len();
    let k = if load(leader) > 0 {
        leader
    } else {
        (0..3).max_by_key(|&i| load(i)).unwrap()
    };
    let others: Vec<usize> = (0..3).filter(|&i| i != k).collect();
    // It must survive both kills: the least busy non-leader.
    let mut w = others
        .iter()
        .copied()
        .filter(|&i| i != leader)
        .min_by_key(|&i| load(i))
        .unwrap();
    eprintln!("kill s{}, leader s{}, ask s{}", k + 1, leader + 1, w + 1);

    // Watch for agent nodes going Unknown, through any server that answers.
    let stop = Arc::new(AtomicBool::new(false));
    let unknown = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let watcher = {
        // Any server that answers will do: node status is datastore state.
        let (stop, unknown) = (stop.clone(), unknown.clone());
        let socks: Vec<_> = servers.iter().map(|s| s.socket.clone()).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let listed = socks.iter().find_map(|sock| {
                    let o = ctl(sock, &["node", "list", "-o", "json"]);
                    serde_json::from_slice::<Vec<Value>>(&o.stdout).ok()
                });
                if let Some(nodes) = listed {
                    for n in nodes {
                        let name = n["name"].as_str().unwrap_or("").to_string();
                        if name.starts_with('a') && n["status"] != "Ready" {
                            unknown
                                .lock()
                                .unwrap()
                                .insert(format!("{name}={}", n["status"]));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // 1. Kill a server: its agents move within seconds; the leader and the
    //    Endpoints follow; a new agent still joins through the fixed address.
    let victims = on(&agents, &server_ip(k + 1));
    assert!(!victims.is_empty(), "the leader s{} holds no tunnel", k + 1);
    servers[k].kill();
    let moved = wait_moved(&victims, &server_ip(k + 1), Duration::from_secs(15));
    eprintln!("failover after kill: {moved:?}");
    let two: Vec<String> = three
        .iter()
        .filter(|s| !s.starts_with(&format!("{}:", server_ip(k + 1))))
        .cloned()
        .collect();
    assert!(
        wait_for(Duration::from_secs(15), || (live_servers(&servers[w])
            == two)
            .then_some(()))
        .is_some(),
        "a dead server must drop out of the list: {:?}",
        live_servers(&servers[w])
    );
    if k == leader {
        assert!(
            leadership_moves_off(&servers[w], k),
            "leadership must move off the dead leader"
        );
    }
    let two_ips: Vec<String> = two
        .iter()
        .map(|s| s.trim_end_matches(":6443").to_string())
        .collect();
    assert!(
        wait_for(Duration::from_secs(15), || (endpoint_ips(
            &net,
            &ns_s[w],
            &servers[w]
        ) == two_ips)
            .then_some(()))
        .is_some(),
        "Endpoints must follow: {:?}",
        endpoint_ips(&net, &ns_s[w], &servers[w])
    );
    agents.push(start_agent(6));
    assert!(
        agents[5].wait_registration("registered", Duration::from_secs(30)),
        "a new agent must join while server {} is down:\n{}",
        k + 1,
        agents[5].log()
    );
    servers[k].restart();
    assert!(
        wait_for(Duration::from_secs(15), || (live_servers(&servers[w])
            == three)
            .then_some(()))
        .is_some(),
        "the killed server must rejoin the list"
    );
    if k != leader {
        // The leader held no tunnel: kill it too, for the leadership move.
        servers[leader].kill();
        assert!(
            leadership_moves_off(&servers[w], leader),
            "leadership must move off the dead leader"
        );
        servers[leader].restart();
        assert!(
            wait_for(Duration::from_secs(15), || (live_servers(&servers[w])
                == three)
                .then_some(()))
            .is_some(),
            "the killed leader must rejoin the list"
        );
    }

    // 2. Cut the busiest server's cable: its agents give it up and move.
    let c = (0..3)
        .max_by_key(|&i| on(&agents, &server_ip(i + 1)).len())
        .unwrap();
    // The checks after the cut go through a server that keeps its cable.
    if w == c {
        w = (0..3).find(|&i| i != c).unwrap();
    }
    let victims = on(&agents, &server_ip(c + 1));
    assert!(!victims.is_empty());
    net.link(&ns_s[c], false);
    let moved = wait_moved(&victims, &server_ip(c + 1), Duration::from_secs(20));
    eprintln!("failover after cut: {moved:?}");
    net.link(&ns_s[c], true);
    assert!(
        wait_for(Duration::from_secs(30), || (live_servers(&servers[w])
            == three)
            .then_some(()))
        .is_some(),
        "the cut server must come back after its cable does: {:?}",
        live_servers(&servers[w])
    );

    // 3. PostgreSQL stops and comes back: tunnels stay up, readyz says 503
    //    meanwhile, every acknowledged write survives.
    let tunnels_before: Vec<usize> = agents
        .iter()
        .map(|a| a.log().matches("registered; tunnel up").count())
        .collect();
    let readyz = format!("https://{}:6443/v1-rk3s/readyz", server_ip(w + 1));
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..24 {
        if i == 8 {
            pg.stop();
            assert!(
                wait_for(Duration::from_secs(15), || (net
                    .curl(&ns_s[w], &readyz, None)
                    .0
                    == 503)
                    .then_some(()))
                .is_some(),
                "readyz must report the datastore outage"
            );
            let st = status(&servers[w]).expect("status answers during an outage");
            assert!(st["datastore_error"].is_string(), "{st}");
        }
        if i == 16 {
            pg.start_again();
            assert!(
                wait_for(Duration::from_secs(30), || (net
                    .curl(&ns_s[w], &readyz, None)
                    .0
                    == 200)
                    .then_some(()))
                .is_some(),
                "readyz must recover with PostgreSQL"
            );
        }
        let name = format!("cm-{i}");
        let o = kubectl(
            &net,
            &ns_s[w],
            &servers[w],
            &["create", "configmap", &name, "--from-literal=i=1"],
        );
        if o.status.success() {
            acked.push(name);
        } else {
            eprintln!("{name}: {}", rk3s_tests::stderr(&o).trim());
            failed += 1;
        }
    }
    assert!(
        acked.len() >= 16,
        "writes before and after the outage must succeed: {acked:?}"
    );
    assert!(
        failed > 0,
        "writes during the outage must fail, not be acknowledged"
    );
    let o = kubectl(
        &net,
        &ns_s[c],
        &servers[c],
        &["get", "configmaps", "-o", "name"],
    );
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    for name in &acked {
        assert!(
            listed.contains(&format!("configmap/{name}\n")),
            "acknowledged {name} lost:\n{listed}"
        );
    }
    let tunnels_after: Vec<usize> = agents
        .iter()
        .map(|a| a.log().matches("registered; tunnel up").count())
        .collect();
    assert_eq!(
        tunnels_before, tunnels_after,
        "tunnels must stay open through a datastore outage"
    );

    // 4. The fixed address goes away; a restarted agent finds the cluster
    //    through its saved server list.
    lb.kill();
    assert_ne!(net.curl(&ns_a[0], &format!("{fixed}/ping"), None).0, 200);
    agents[0].stop();
    agents[0].restart();
    assert!(
        agents[0].wait_registration("registered", Duration::from_secs(30)),
        "an agent must rejoin through its saved server list:\n{}",
        agents[0].log()
    );

    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let unknown = unknown.lock().unwrap().clone();
    assert!(unknown.is_empty(), "agent nodes went Unknown: {unknown:?}");

    // 5. A server with another token is refused, clearly, and leaves the
    //    cluster's data alone.
    let mut cmd = net.exec(&ns_s[w], &[]);
    cmd.arg(bin("rk3sd"))
        .args(["server", "--config", "/dev/null", "--disable-agent"])
        .args([
            "--bind-address",
            &server_ip(w + 1),
            "--https-listen-port",
            "6444",
        ])
        .arg("--data-dir")
        .arg(t.path().join("intruder"))
        .arg("--admin-socket")
        .arg(t.path().join("intruder.sock"))
        .arg("--write-kubeconfig")
        .arg(t.path().join("intruder.kubeconfig"))
        .env("RK3S_DATASTORE_ENDPOINT", &url)
        .env("RK3S_TOKEN", "another-cluster-secret");
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    let err = rk3s_tests::stderr(&o);
    assert!(err.contains("encrypted with a different token"), "{err}");
    assert!(!err.contains("another-cluster-secret"), "{err}");
    assert_eq!(servers[w].ca_pem(), ca);
    assert!(servers[k].nodes().iter().any(|n| n["name"] == "a6"));
}
