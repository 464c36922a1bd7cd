//! Hosts of our own for multi-host tests: one network namespace per host,
//! each with an `eth0` veth whose peer sits on a bridge in a private
//! "switch" namespace. Nothing touches the machine's own namespace, and
//! traffic goes only between the namespaces made here. Needs root and
//! iproute2. Everything is deleted on drop.

use crate::{Agent, Proc, Server, RUNTIME};
use std::path::Path;
use std::process::Command;

/// The fixed registration address of the HA topology (haproxy's host).
pub const LB_IP: &str = "10.77.0.3";

/// Address of server `i` (1-based) in the HA topology.
pub fn server_ip(i: usize) -> String {
    format!("10.77.0.1{i}")
}

/// Server `i` of an HA cluster on PostgreSQL, in namespace `ns`, on
/// `server_ip(i)`:6443 with the fixed address in its certificate.
pub fn start_ha_server(
    ns: &str,
    dir: &Path,
    i: usize,
    pg_url: &str,
    secret: &str,
    extra: &[&str],
) -> Server {
    let ip = server_ip(i);
    let name = format!("s{i}");
    let mut args = vec![
        "--bind-address",
        &ip,
        "--https-listen-port",
        "6443",
        "--node-name",
        &name,
        "--tls-san",
        LB_IP,
    ];
    args.extend_from_slice(extra);
    Server::start_in(
        Some(ns),
        dir,
        &args,
        &[("RK3S_DATASTORE_ENDPOINT", pg_url), ("RK3S_TOKEN", secret)],
    )
}

/// A server that runs pods (its own containerd), named `name`, in
/// namespace `ns` on `ip`:6443; `extra` flags appended.
pub fn node_server(ns: &str, dir: &Path, ip: &str, name: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        RUNTIME,
        "--bind-address",
        ip,
        "--https-listen-port",
        "6443",
        "--node-name",
        name,
    ];
    args.extend_from_slice(extra);
    Server::start_in(Some(ns), dir, &args, &[])
}

/// An agent that runs pods, named `name`, in namespace `ns`, joining
/// `server` (a [`node_server`] on `server_ip`); `extra` flags appended.
pub fn node_agent(
    ns: &str,
    dir: &Path,
    name: &str,
    server: &Server,
    server_ip: &str,
    extra: &[&str],
) -> Agent {
    let mut args: Vec<String> = vec![
        RUNTIME.into(),
        "--server".into(),
        format!("https://{server_ip}:6443"),
        "--token-file".into(),
        server.token_file().display().to_string(),
        "--node-name".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Agent::start_in(Some(ns), dir, name, args, &[])
}

/// haproxy in namespace `ns` on `LB_IP`:6443, TCP to servers 1..=n with
/// fast health checks: the fixed registration address.
pub fn haproxy(net: &Net, ns: &str, dir: &Path, n: usize) -> Proc {
    let servers: String = (1..=n)
        .map(|i| format!("    server s{i} {}:6443 check\n", server_ip(i)))
        .collect();
    let cfg = format!(
        "global\n    maxconn 4000\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n    retries 2\n    option redispatch\n\
         frontend rk3s\n    bind {LB_IP}:6443\n    default_backend servers\n\
         backend servers\n    default-server inter 500ms fall 2 rise 1\n{servers}"
    );
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let mut cmd = net.exec(ns, &["haproxy", "-db", "-f"]);
    cmd.arg(&file);
    Proc::spawn("haproxy", cmd, dir.join("haproxy.log"))
}

pub struct Net {
    prefix: String,
    switch: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// True when this process may create namespaces (root with iproute2).
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network-namespace tests need root (ip netns add)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("network-namespace tests need iproute2 (`ip`)".into()),
    }
}

impl Net {
    /// A new switch; namespace names start with `rk3s<pid>n<k>` so
    /// parallel tests and runs, and leftovers of killed runs, do not collide.
    pub fn new() -> Self {
        if let Err(e) = available() {
            panic!("{e}");
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("rk3s{}n{k}", std::process::id());
        let switch = format!("{prefix}-sw");
        let _ = Command::new("ip").args(["netns", "del", &switch]).output();
        ip(&["netns", "add", &switch]);
        let net = Self {
            prefix,
            switch,
            hosts: Vec::new(),
        };
        net.exec_ok(
            &net.switch.clone(),
            &["ip", "link", "add", "br0", "type", "bridge"],
        );
        net.exec_ok(&net.switch.clone(), &["ip", "link", "set", "br0", "up"]);
        net
    }

    /// Add host `name` with address `addr`/24 on eth0; returns its namespace.
    pub fn host(&mut self, name: &str, addr: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let port = format!("v-{name}");
        assert!(port.len() <= 15, "host name {name} too long");
        self.exec_ok(
            &ns,
            &[
                "ip",
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.switch,
            ],
        );
        self.exec_ok(&self.switch, &["ip", "link", "set", &port, "master", "br0"]);
        self.exec_ok(&self.switch, &["ip", "link", "set", &port, "up"]);
        self.exec_ok(
            &ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
        self.exec_ok(&ns, &["ip", "link", "set", "eth0", "up"]);
        self.exec_ok(&ns, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command in namespace `ns` and require success; returns stdout.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> String {
        let o = self.exec(ns, args).output().expect("ip netns exec");
        assert!(
            o.status.success(),
            "in {ns}: {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A command to run in namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Cut (or restore) a host's cable: its eth0 goes down, so packets are
    /// dropped without a reset, as when a host falls off the network.
    pub fn link(&self, ns: &str, up: bool) {
        self.exec_ok(
            ns,
            &["ip", "link", "set", "eth0", if up { "up" } else { "down" }],
        );
    }

    /// `curl` inside `ns` with headers read from `header_file` (so no
    /// credential shows in `ps`); returns (HTTP status, body).
    pub fn curl(&self, ns: &str, url: &str, header_file: Option<&Path>) -> (u16, String) {
        let mut args = vec![
            "curl".to_string(),
            "-sk".into(),
            "--max-time".into(),
            "5".into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(h) = header_file {
            args.push("-H".into());
            args.push(format!("@{}", h.display()));
        }
        args.push(url.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self.exec(ns, &refs).output().expect("curl");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// The HA topology's hosts: PostgreSQL, haproxy, three servers, agents.
pub struct HaHosts {
    pub pg: String,
    pub lb: String,
    pub servers: Vec<String>,
    pub agents: Vec<String>,
}

impl Net {
    /// PostgreSQL on 10.77.0.2, haproxy on `LB_IP`, servers on
    /// `server_ip(1..=3)`, agent hosts on 10.77.0.21 onwards.
    pub fn ha_hosts(&mut self, agent_hosts: usize) -> HaHosts {
        HaHosts {
            pg: self.host("pg", "10.77.0.2"),
            lb: self.host("lb", LB_IP),
            servers: (1..=3)
                .map(|i| self.host(&format!("s{i}"), &server_ip(i)))
                .collect(),
            agents: (1..=agent_hosts)
                .map(|i| self.host(&format!("a{i}"), &format!("10.77.0.{}", 20 + i)))
                .collect(),
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
