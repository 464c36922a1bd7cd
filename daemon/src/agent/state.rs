//! What a running agent shows about itself (`rk3sctl status`, systemd's
//! STATUS=, the server's view of its embedded agent). A leaf: it imports
//! nothing of the agent, so the server and the admin socket may read it.

use std::sync::Mutex;

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
        }
    }
}

impl AgentState {
    pub(crate) fn set_servers(&self, servers: Vec<String>) {
        *self.servers.lock().expect("lock") = servers;
    }

    pub(crate) fn set(&self, registration: &str, server: Option<&str>) {
        *self.registration.lock().expect("lock") = registration.to_string();
        *self.connected_server.lock().expect("lock") = server.map(str::to_string);
    }
}
