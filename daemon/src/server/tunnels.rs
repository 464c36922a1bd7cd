//! The agent tunnels open on this server: one session per node, the
//! newest connection of a node winning. `session` runs each one; the
//! admin socket, node removal and password rotation look sessions up
//! here, and the API reaches kubelets through them (`relay::Dialer`).

use crate::apiserver::state::unreachable;
use crate::registry::printers::human_duration;
use crate::registry::KubeError;
use crate::streams::mux::Mux;
use rk3s_api::tunnel::ServerMessage;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Answer to a password rotation request: Ok, or the agent's error.
pub type RotationReply = Result<(), String>;

pub struct Session {
    pub(crate) id: u64,
    /// Boxed: tokio allocates a channel's first block of 32 slots up
    /// front, which for the bare enum was 4 KiB per connected agent.
    pub tx: mpsc::Sender<Box<ServerMessage>>,
    pub(crate) cancel: CancellationToken,
    pub connected_at: Instant,
    /// The streams to the node (its kubelet's API).
    pub mux: Mux,
    pub(crate) rotations: Mutex<HashMap<String, oneshot::Sender<RotationReply>>>,
}

impl Session {
    /// Ask for a reply to rotation `id`; resolved by the message loop.
    pub fn await_rotation(&self, id: &str) -> oneshot::Receiver<RotationReply> {
        let (tx, rx) = oneshot::channel();
        self.rotations
            .lock()
            .expect("lock")
            .insert(id.to_string(), tx);
        rx
    }
}

pub struct Tunnels {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// When each node's last tunnel closed, for the errors that name it.
    closed_at: Mutex<HashMap<String, Instant>>,
    started: Instant,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            closed_at: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }
}

/// How long ago, as kubectl says it (`95s`, `3m5s`).
fn ago(t: Instant) -> String {
    human_duration(t.elapsed().as_secs() as i64)
}

impl Tunnels {
    /// A stream to the node's kubelet through its tunnel to this server,
    /// or the error saying since when there is none.
    pub fn here(&self, node: &str) -> Result<tokio::io::DuplexStream, KubeError> {
        let Some(s) = self.get(node) else {
            return Err(unreachable(node, self.absence(node)));
        };
        s.mux.open("kubelet").map_err(|e| unreachable(node, e))
    }

    /// Why `node` has no tunnel here: since when it closed, or that it
    /// never had one since this server started.
    pub fn absence(&self, node: &str) -> String {
        match self.closed_at.lock().expect("lock").get(node) {
            Some(t) => format!(
                "its tunnel to this server closed {} ago and has not reconnected",
                ago(*t)
            ),
            None => format!(
                "it has had no tunnel to this server since the server started {} ago",
                ago(self.started)
            ),
        }
    }
}

impl Tunnels {
    pub fn get(&self, node: &str) -> Option<Arc<Session>> {
        self.sessions.lock().expect("lock").get(node).cloned()
    }

    pub fn count(&self) -> usize {
        self.sessions.lock().expect("lock").len()
    }

    pub fn names(&self) -> Vec<String> {
        self.sessions
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Close a node's tunnel; true if one was open.
    pub fn close(&self, node: &str) -> bool {
        match self.sessions.lock().expect("lock").remove(node) {
            Some(s) => {
                s.cancel.cancel();
                self.mark_closed(node);
                true
            }
            None => false,
        }
    }

    pub fn close_all(&self) {
        for (_, s) in self.sessions.lock().expect("lock").drain() {
            s.cancel.cancel();
        }
    }

    pub(crate) fn insert(
        &self,
        node: &str,
        tx: mpsc::Sender<Box<ServerMessage>>,
        mux: Mux,
        parent: &CancellationToken,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            mux,
            cancel: parent.child_token(),
            connected_at: Instant::now(),
            rotations: Mutex::new(HashMap::new()),
        });
        // The newest connection of a node wins (its password was just verified).
        if let Some(old) = self
            .sessions
            .lock()
            .expect("lock")
            .insert(node.to_string(), s.clone())
        {
            tracing::info!(node, "node reconnected; closing its previous tunnel");
            old.cancel.cancel();
        }
        s
    }

    pub(crate) fn remove_if(&self, node: &str, id: u64) -> bool {
        let mut m = self.sessions.lock().expect("lock");
        if m.get(node).is_some_and(|s| s.id == id) {
            m.remove(node);
            drop(m);
            self.mark_closed(node);
            true
        } else {
            false
        }
    }

    fn mark_closed(&self, node: &str) {
        self.closed_at
            .lock()
            .expect("lock")
            .insert(node.to_string(), Instant::now());
    }
}
