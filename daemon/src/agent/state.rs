//! What a running agent shows about itself (`rk3sctl status`, systemd's
//! STATUS=, the server's view of its embedded agent). A leaf: it imports
//! nothing of the agent, so the server and the admin socket may read it.

use rk3s_api::admin::RttSummary;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Heartbeat round trips kept for `rk3sctl status`.
const RTT_SAMPLES: usize = 128;

/// What `rk3sctl status` shows about the agent.
#[derive(Debug)]
pub struct AgentState {
    pub node_name: Mutex<String>,
    pub connected_server: Mutex<Option<String>>,
    pub registration: Mutex<String>,
    /// Set once the first registration succeeded.
    pub registered: tokio::sync::watch::Sender<bool>,
    /// The servers the load balancer knows (`host:port`).
    pub servers: Mutex<Vec<String>>,
    /// The cluster CIDR the servers announce (empty until the first hello).
    pub cluster_cidr: tokio::sync::watch::Sender<String>,
    /// The last heartbeats' round trips, oldest first.
    heartbeat_rtts: Mutex<VecDeque<Duration>>,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            node_name: Mutex::new(String::new()),
            connected_server: Mutex::new(None),
            registration: Mutex::new("starting".into()),
            registered: tokio::sync::watch::channel(false).0,
            servers: Mutex::new(Vec::new()),
            cluster_cidr: tokio::sync::watch::channel(String::new()).0,
            heartbeat_rtts: Mutex::new(VecDeque::with_capacity(RTT_SAMPLES)),
        }
    }
}

impl AgentState {
    pub(crate) fn set_servers(&self, servers: Vec<String>) {
        *self.servers.lock().expect("lock") = servers;
    }

    pub(crate) fn record_rtt(&self, rtt: Duration) {
        let mut v = self.heartbeat_rtts.lock().expect("lock");
        if v.len() == RTT_SAMPLES {
            v.pop_front();
        }
        v.push_back(rtt);
    }

    /// p50, p99 and max of the recent round trips; `None` before the first.
    pub fn heartbeat_rtt(&self) -> Option<RttSummary> {
        let mut v: Vec<Duration> = self
            .heartbeat_rtts
            .lock()
            .expect("lock")
            .iter()
            .copied()
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
        Some(RttSummary {
            samples: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }

    pub(crate) fn set(&self, registration: &str, server: Option<&str>) {
        *self.registration.lock().expect("lock") = registration.to_string();
        *self.connected_server.lock().expect("lock") = server.map(str::to_string);
    }
}
