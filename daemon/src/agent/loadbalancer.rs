//! The agent's client-side load balancer: which server to open the tunnel
//! to. The agent starts from the fixed registration address (`--server`),
//! learns the live servers from the server it reaches (at registration and
//! on every change), keeps them in
//! `<data-dir>/agent/etc/rk3s-agent-load-balancer.json` so a restarted agent
//! finds the cluster even when the fixed address is down, and health-checks
//! them. The fixed address stays in the list as the last resort.

use crate::host::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The state file, in the shape K3s operators know from
/// `k3s-agent-load-balancer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct StateFile {
    #[serde(rename = "ServerURL")]
    server_url: String,
    server_addresses: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    /// Answered the last health check or carried a tunnel.
    Healthy,
    /// Not checked yet.
    Unchecked,
    /// Refused, timed out or went silent.
    Failed,
}

#[derive(Debug)]
struct Inner {
    /// Learned servers, `host:port`.
    servers: Vec<String>,
    health: HashMap<String, Health>,
    /// The server of the last tunnel that came up: tried first.
    preferred: Option<String>,
}

pub struct LoadBalancer {
    /// The fixed registration address, `https://host:port`.
    fixed: String,
    file: Option<PathBuf>,
    /// Spreads agents over servers: each starts its rotation elsewhere.
    spread: usize,
    inner: Mutex<Inner>,
}

pub fn state_file(data_dir: &Path) -> PathBuf {
    data_dir
        .join("agent")
        .join("etc")
        .join("rk3s-agent-load-balancer.json")
}

/// Where in the server list a node starts its rotation.
fn spread_of(node_name: &str) -> usize {
    node_name
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

fn url_of(addr: &str) -> String {
    format!("https://{addr}")
}

impl LoadBalancer {
    /// A balancer that only ever uses `fixed` (the server's embedded agent).
    pub fn fixed(fixed: &str) -> Self {
        Self {
            fixed: fixed.to_string(),
            file: None,
            spread: 0,
            inner: Mutex::new(Inner {
                servers: Vec::new(),
                health: HashMap::new(),
                preferred: None,
            }),
        }
    }

    /// Load the persisted server list if it was learned through the same
    /// fixed address; a list from another cluster is ignored.
    pub fn load(fixed: &str, data_dir: &Path, node_name: &str) -> Self {
        let file = state_file(data_dir);
        let servers = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(s) if s.server_url == fixed => s.server_addresses,
                Ok(_) => {
                    tracing::info!(file = %file.display(), "the saved server list belongs to another --server; starting from the fixed address");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable server list");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        if !servers.is_empty() {
            tracing::info!(servers = ?servers, "using the saved server list");
        }
        Self {
            fixed: fixed.to_string(),
            file: Some(file),
            spread: spread_of(node_name),
            inner: Mutex::new(Inner {
                servers,
                health: HashMap::new(),
                preferred: None,
            }),
        }
    }

    /// A balancer over `servers` (`host:port`, the first one standing for
    /// the fixed address) that persists nothing: the benchmarks' simulated
    /// agents pick servers with it as real agents do.
    pub fn in_memory(servers: Vec<String>, node_name: &str) -> Self {
        Self {
            fixed: servers.first().map(|s| url_of(s)).unwrap_or_default(),
            file: None,
            spread: spread_of(node_name),
            inner: Mutex::new(Inner {
                servers,
                health: HashMap::new(),
                preferred: None,
            }),
        }
    }

    pub fn fixed_url(&self) -> &str {
        &self.fixed
    }

    /// Learned servers (`host:port`).
    pub fn servers(&self) -> Vec<String> {
        self.inner.lock().expect("lock").servers.clone()
    }

    /// Take a server list from the server; persist it if it changed.
    /// Returns true if it changed.
    pub fn update(&self, mut servers: Vec<String>) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        servers.retain(|s| !s.is_empty());
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return false;
        }
        {
            let mut inner = self.inner.lock().expect("lock");
            if inner.servers == servers {
                return false;
            }
            inner.servers = servers.clone();
        }
        tracing::info!(servers = ?servers, "server list updated");
        let state = StateFile {
            server_url: self.fixed.clone(),
            server_addresses: servers,
        };
        let saved = file
            .parent()
            .map_or(Ok(()), |d| fsutil::ensure_dir(d, 0o700))
            .and_then(|()| {
                fsutil::write_atomic(
                    file,
                    &serde_json::to_vec_pretty(&state).expect("serializable"),
                    0o600,
                )
            });
        if let Err(e) = saved {
            tracing::warn!(file = %file.display(), error = %e, "could not save the server list");
        }
        true
    }

    /// URLs to try, best first: the server of the last tunnel, then healthy
    /// servers, unchecked ones, failed ones, and the fixed address last.
    pub fn candidates(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("lock");
        let n = inner.servers.len();
        let mut ranked: Vec<(u8, usize, String)> = inner
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let url = url_of(s);
                let health = inner.health.get(&url).copied().unwrap_or(Health::Unchecked);
                let rank = match health {
                    Health::Healthy if inner.preferred.as_deref() == Some(url.as_str()) => 0,
                    Health::Unchecked if inner.preferred.as_deref() == Some(url.as_str()) => 0,
                    Health::Healthy => 1,
                    Health::Unchecked => 2,
                    Health::Failed => 3,
                };
                (rank, (i + n - self.spread % n.max(1)) % n.max(1), url)
            })
            .collect();
        ranked.sort();
        let mut out: Vec<String> = ranked.into_iter().map(|(_, _, u)| u).collect();
        if !out.contains(&self.fixed) {
            out.push(self.fixed.clone());
        }
        out
    }

    /// A tunnel came up through `url`.
    pub fn connected(&self, url: &str) {
        let mut inner = self.inner.lock().expect("lock");
        inner.health.insert(url.to_string(), Health::Healthy);
        inner.preferred = Some(url.to_string());
    }

    /// `url` refused, timed out, or its tunnel went silent.
    pub fn failed(&self, url: &str) {
        let mut inner = self.inner.lock().expect("lock");
        inner.health.insert(url.to_string(), Health::Failed);
        if inner.preferred.as_deref() == Some(url) {
            inner.preferred = None;
        }
    }

    fn checked(&self, url: &str, ok: bool) {
        let mut inner = self.inner.lock().expect("lock");
        inner.health.insert(
            url.to_string(),
            if ok { Health::Healthy } else { Health::Failed },
        );
    }
}

/// Health-check every learned server (`GET /ping`) every `every` while
/// the agent has no tunnel, so a reconnect goes to a server that answers.
/// While a tunnel is up (`tunnel_up`) nothing is checked: the tunnel's
/// heartbeats vouch for its server, and the others are tried in a
/// reconnect's round anyway. Checking them all the time would cost each
/// server two requests a second per thousand agents, and a TLS handshake
/// each whenever the interval outlasts the server's idle timeout.
pub async fn health_checks(
    lb: Arc<LoadBalancer>,
    ca_pem: Vec<u8>,
    every: Duration,
    tunnel_up: impl Fn() -> bool + Send + 'static,
    cancel: CancellationToken,
) {
    let client = match reqwest::Certificate::from_pem(&ca_pem).and_then(|ca| {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(2))
            .build()
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "server health checks disabled");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if tunnel_up() {
            continue;
        }
        let urls: Vec<String> = lb.servers().iter().map(|s| url_of(s)).collect();
        let checks = urls.iter().map(|u| {
            let client = client.clone();
            async move {
                let ok = client
                    .get(format!("{u}{}", rk3s_api::routes::PING))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (u.clone(), ok)
            }
        });
        for (url, ok) in futures_util::future::join_all(checks).await {
            lb.checked(&url, ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: &str = "https://lb.example:6443";

    #[test]
    fn fixed_address_is_the_last_resort_and_failures_go_last() {
        let dir = tempfile::tempdir().unwrap();
        let lb = LoadBalancer::load(FIXED, dir.path(), "n1");
        assert_eq!(lb.candidates(), vec![FIXED]);
        assert!(lb.update(vec!["10.0.0.2:6443".into(), "10.0.0.1:6443".into()]));
        assert!(!lb.update(vec!["10.0.0.1:6443".into(), "10.0.0.2:6443".into()]));
        let c = lb.candidates();
        assert_eq!(c.len(), 3);
        assert_eq!(c[2], FIXED);
        lb.connected("https://10.0.0.2:6443");
        assert_eq!(lb.candidates()[0], "https://10.0.0.2:6443");
        lb.failed("https://10.0.0.2:6443");
        assert_eq!(
            lb.candidates(),
            vec!["https://10.0.0.1:6443", "https://10.0.0.2:6443", FIXED]
        );
    }

    #[test]
    fn the_list_survives_a_restart_only_for_the_same_fixed_address() {
        let dir = tempfile::tempdir().unwrap();
        let lb = LoadBalancer::load(FIXED, dir.path(), "n1");
        lb.update(vec!["10.0.0.1:6443".into()]);
        let text = std::fs::read_to_string(state_file(dir.path())).unwrap();
        assert!(
            text.contains("\"ServerURL\": \"https://lb.example:6443\""),
            "{text}"
        );
        assert!(text.contains("\"ServerAddresses\""), "{text}");
        let again = LoadBalancer::load(FIXED, dir.path(), "n1");
        assert_eq!(again.servers(), vec!["10.0.0.1:6443"]);
        let other = LoadBalancer::load("https://elsewhere:6443", dir.path(), "n1");
        assert!(other.servers().is_empty());
    }

    #[test]
    fn agents_start_their_rotation_at_different_servers() {
        let dir = tempfile::tempdir().unwrap();
        let servers: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:6443")).collect();
        let firsts: std::collections::BTreeSet<String> = (0..12)
            .map(|i| {
                let lb = LoadBalancer::load(FIXED, dir.path(), &format!("agent-{i}"));
                lb.update(servers.clone());
                lb.candidates()[0].clone()
            })
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    /// While a tunnel is up no server is probed; once it is down, all are.
    #[tokio::test]
    async fn servers_are_checked_only_while_there_is_no_tunnel() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        let lb = Arc::new(LoadBalancer::in_memory(vec![addr.clone()], "n1"));
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let cancel = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::credentials::certs::Pki::load_or_create(dir.path(), &[]).unwrap();
        tokio::spawn(health_checks(
            lb.clone(),
            pki.ca_bundle().to_vec(),
            Duration::from_millis(20),
            move || flag.load(Ordering::SeqCst),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 0);
        up.store(false, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while probes.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(probes.load(Ordering::SeqCst) > 0, "never probed");
        // The probe failed (no TLS there): the server ranks as failed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lb.inner.lock().unwrap().health.get(&url_of(&addr)) != Some(&Health::Failed)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            lb.inner.lock().unwrap().health.get(&url_of(&addr)),
            Some(&Health::Failed)
        );
        cancel.cancel();
    }
}
