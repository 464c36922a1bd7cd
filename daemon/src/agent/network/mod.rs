//! The node's pod network, what flannel does in K3s's agent with its
//! host-gw backend: the CNI config for this node's pod CIDR (`cni`), a
//! route to every other node's pod CIDR (`routes`), and masquerading of
//! what leaves the cluster CIDR (`masquerade`). It watches Nodes as
//! `system:rk3s-controller` (K3s's flannel runs as `system:k3s-controller`),
//! since the kubelet's identity may only read its own Node.
//!
//! Until the CNI config is written containerd reports NetworkReady=false,
//! and the node stays NotReady.

pub mod cni;
pub mod masquerade;
pub mod routes;

use crate::agent::apiclient::{self, Api, Identity};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub struct NetworkParams {
    pub node: String,
    /// Where the agent's client certificates are (`<data-dir>/agent`).
    pub agent_dir: PathBuf,
    pub ca_pem: Vec<u8>,
    pub servers: apiclient::Servers,
    /// Where containerd reads its CNI config.
    pub cni_conf_dir: PathBuf,
    /// host-local's allocations (`<data-dir>/agent/cni/networks`).
    pub cni_state_dir: PathBuf,
    /// The bridge (`cni0`).
    pub bridge: String,
}

/// How often routes and rules are checked even without a change (someone
/// may have flushed them).
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Nodes {
    by_name: Mutex<BTreeMap<String, Node>>,
    changed: Notify,
}

/// Run the pod network until `cancel`.
pub async fn run(
    p: NetworkParams,
    mut cluster_cidr: watch::Receiver<String>,
    cancel: CancellationToken,
) {
    let api = loop {
        match Api::new(
            &p.agent_dir,
            Identity::Controller,
            &p.ca_pem,
            p.servers.clone(),
        ) {
            Ok(a) => break a,
            Err(e) => {
                tracing::debug!(error = %e, "pod network: waiting for the controller certificate")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    // The bridge plugin turns this on when it makes the gateway; routed
    // pod traffic from other nodes may come first.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "could not enable IPv4 forwarding; pods on other nodes are unreachable");
    }
    let nodes = Arc::new(Nodes::default());
    tokio::spawn(follow(api, nodes.clone(), cancel.child_token()));
    let mut state = Applied::default();
    loop {
        let cidr = cluster_cidr.borrow_and_update().clone();
        let snapshot: Vec<Node> = nodes
            .by_name
            .lock()
            .expect("nodes")
            .values()
            .cloned()
            .collect();
        state.reconcile(&p, &snapshot, &cidr).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = nodes.changed.notified() => {}
            _ = cluster_cidr.changed() => {}
            // The resync finds rules someone else removed or changed.
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// What was last done, so unchanged inputs are not redone, only a change
/// is logged, and a failure is logged once.
#[derive(Default)]
struct Applied {
    rules_for: String,
    /// The masquerade rules as iptables listed them after they were
    /// installed: a resync that lists the same has nothing to do.
    rules_seen: String,
    route_errors: BTreeSet<String>,
}

impl Applied {
    async fn reconcile(&mut self, p: &NetworkParams, nodes: &[Node], cluster_cidr: &str) {
        let own = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(p.node.as_str()))
            .and_then(|n| n.spec.as_ref()?.pod_cidr.clone());
        if let Some(cidr) = &own {
            match cni::write(&p.cni_conf_dir, cidr, &p.cni_state_dir, &p.bridge) {
                Ok(true) => {
                    // A node forgotten and registered again may get another
                    // CIDR: the bridge's old gateway address must go, or
                    // the bridge plugin refuses every new pod.
                    cni::readdress_bridge(&p.bridge, cidr).await;
                    tracing::info!(pod_cidr = %cidr, dir = %p.cni_conf_dir.display(), "pod network configured")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, dir = %p.cni_conf_dir.display(), "could not write the CNI config")
                }
            }
        }
        if !cluster_cidr.is_empty() {
            self.masquerade(cluster_cidr).await;
        }
        match routes::apply(&routes::wanted(nodes, &p.node)).await {
            Ok(failed) => {
                let failed: BTreeSet<String> = failed.into_iter().collect();
                for e in failed.difference(&self.route_errors) {
                    tracing::warn!(error = %e, "route to a node's pods not installed (host-gw needs the nodes on one link)");
                }
                self.route_errors = failed;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the routing table"),
        }
    }
}

impl Applied {
    /// Install the masquerade rules when the cluster CIDR is new or the
    /// rules are not as they were left (flushed by a firewall reload, say).
    async fn masquerade(&mut self, cluster_cidr: &str) {
        let listed = masquerade::snapshot().await.unwrap_or_default();
        if self.rules_for == cluster_cidr && !listed.is_empty() && listed == self.rules_seen {
            return;
        }
        if let Err(e) = masquerade::ensure(cluster_cidr).await {
            tracing::warn!(error = %e, "pod network rules not installed; retrying");
            return;
        }
        if self.rules_for.is_empty() {
            tracing::info!(
                cluster_cidr,
                "masquerading traffic that leaves the cluster CIDR"
            );
        } else if self.rules_for != cluster_cidr {
            tracing::info!(cluster_cidr, "masquerade rules follow the new cluster CIDR");
        } else {
            tracing::info!(
                cluster_cidr,
                "masquerade rules were changed or removed; restored"
            );
        }
        self.rules_for = cluster_cidr.to_string();
        self.rules_seen = masquerade::snapshot().await.unwrap_or_default();
    }
}

/// List and watch all Nodes into `nodes` until `cancel`.
async fn follow(api: Api, nodes: Arc<Nodes>, cancel: CancellationToken) {
    loop {
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = api.list("/api/v1/nodes", "") => r,
        };
        let rv = match listed {
            Ok((items, rv)) => {
                let map = items
                    .into_iter()
                    .filter_map(|v| serde_json::from_value::<Node>(v).ok())
                    .filter_map(|n| Some((n.metadata.name.clone()?, n)))
                    .collect();
                *nodes.by_name.lock().expect("nodes") = map;
                nodes.changed.notify_one();
                rv
            }
            Err(e) => {
                tracing::debug!(error = %e, "pod network: listing nodes failed; retrying");
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                continue;
            }
        };
        let n = nodes.clone();
        let watched = api.watch("/api/v1/nodes", "", &rv, |kind, obj: Value| {
            let Ok(node) = serde_json::from_value::<Node>(obj) else {
                return;
            };
            let Some(name) = node.metadata.name.clone() else {
                return;
            };
            let mut map = n.by_name.lock().expect("nodes");
            match kind {
                "DELETED" => {
                    map.remove(&name);
                }
                "ADDED" | "MODIFIED" => {
                    // Heartbeats change nothing a route depends on.
                    let same = map.get(&name).is_some_and(|old| {
                        old.spec.as_ref().map(|s| &s.pod_cidr)
                            == node.spec.as_ref().map(|s| &s.pod_cidr)
                            && old.status.as_ref().map(|s| &s.addresses)
                                == node.status.as_ref().map(|s| &s.addresses)
                    });
                    map.insert(name, node);
                    if same {
                        return;
                    }
                }
                _ => return,
            }
            n.changed.notify_one();
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = watched => if let Err(e) = r {
                tracing::debug!(error = %e, "pod network: node watch ended; listing again");
            }
        }
    }
}
