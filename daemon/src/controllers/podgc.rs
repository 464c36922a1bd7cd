//! The pod garbage collector, as kube-controller-manager's: pods bound to
//! a node that no longer exists are deleted at once (no kubelet will
//! finish them), after the node has been missing for a quarantine period
//! (it may be re-registering); finished pods beyond
//! `--terminated-pod-gc-threshold` go, oldest first.

use super::client::{s, Client};
use super::replicaset::terminal;
use crate::registry::cache::Cache;
use crate::registry::kinds;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Upstream's gcCheckPeriod and quarantine for a missing node.
const PERIOD: Duration = Duration::from_secs(20);
const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's default `--terminated-pod-gc-threshold`.
pub const TERMINATED_THRESHOLD: usize = 12_500;

/// Run until `stop`.
pub async fn run(c: Client, cache: Arc<Cache>, threshold: usize, stop: CancellationToken) {
    tokio::select! { _ = stop.cancelled() => return, _ = cache.synced() => {} }
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(PERIOD);
    let pods_rt = kinds::PODS.resource_type();
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
        let nodes: HashSet<String> = cache
            .list("/registry/nodes/")
            .into_iter()
            .map(|(_, n)| s(&n, "/metadata/name").to_string())
            .collect();
        let pods = cache.list("/registry/pods/");
        let mut orphaned_on = HashSet::new();
        let mut finished = vec![];
        for (_, p) in &pods {
            let node = s(p, "/spec/nodeName");
            if !node.is_empty() && !nodes.contains(node) {
                orphaned_on.insert(node.to_string());
                let since = *missing_since
                    .entry(node.to_string())
                    .or_insert_with(Instant::now);
                if since.elapsed() >= QUARANTINE {
                    let (ns, name) = (s(p, "/metadata/namespace"), s(p, "/metadata/name"));
                    match c
                        .force_delete(&pods_rt, ns, name, s(p, "/metadata/uid"))
                        .await
                    {
                        Ok(()) => tracing::info!(
                            namespace = ns,
                            pod = name,
                            node,
                            "deleted a pod of a node that no longer exists"
                        ),
                        Err(e) => {
                            tracing::warn!(pod = name, error = %e, "could not delete an orphaned pod")
                        }
                    }
                }
            } else if terminal(p) {
                finished.push(p);
            }
        }
        missing_since.retain(|n, _| orphaned_on.contains(n));
        if finished.len() > threshold {
            finished.sort_by_key(|p| s(p, "/metadata/creationTimestamp").to_string());
            for p in &finished[..finished.len() - threshold] {
                let (ns, name) = (s(p, "/metadata/namespace"), s(p, "/metadata/name"));
                if let Err(e) = c
                    .force_delete(&pods_rt, ns, name, s(p, "/metadata/uid"))
                    .await
                {
                    tracing::warn!(pod = name, error = %e, "could not delete a finished pod");
                }
            }
        }
    }
}
