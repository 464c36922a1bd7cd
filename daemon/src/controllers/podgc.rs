//! The pod garbage collector, as kube-controller-manager's: pods bound to
//! a node that no longer exists are deleted at once (no kubelet will
//! finish them), after the node has been missing for a quarantine period
//! (it may be re-registering); finished pods beyond
//! `--terminated-pod-gc-threshold` go, oldest first.

use super::client::{s, Client};
use super::predicates::terminal;

use super::runtime::{single, Controller, Requeue};
use crate::registry::cache::Cache;
use crate::registry::kinds;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upstream's gcCheckPeriod and quarantine for a missing node.
const PERIOD: Duration = Duration::from_secs(20);
const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's default `--terminated-pod-gc-threshold`.
pub const TERMINATED_THRESHOLD: usize = 12_500;

/// The collector as a controller of one key, every [`PERIOD`].
pub fn controller(c: Client, cache: Arc<Cache>, threshold: usize) -> Controller {
    let gc = Arc::new(PodGc {
        c,
        cache,
        threshold,
        missing_since: Mutex::new(HashMap::new()),
    });
    Controller::new("podgc", move |_key: String| {
        let gc = gc.clone();
        async move {
            gc.pass().await;
            Ok(Requeue::After(PERIOD))
        }
    })
    .lists(single("pods"), None)
}

struct PodGc {
    c: Client,
    cache: Arc<Cache>,
    threshold: usize,
    /// Since when each node pods are bound to has been missing.
    missing_since: Mutex<HashMap<String, Instant>>,
}

impl PodGc {
    async fn pass(&self) {
        let (c, cache, threshold) = (&self.c, &self.cache, self.threshold);
        let pods_rt = kinds::PODS.resource_type();
        let nodes: HashSet<String> = cache
            .list(&kinds::NODES.prefix(None))
            .into_iter()
            .map(|(_, n)| s(&n, "/metadata/name").to_string())
            .collect();
        let pods = cache.list(&kinds::PODS.prefix(None));
        let mut orphaned_on = HashSet::new();
        let mut finished = vec![];
        let mut doomed = vec![];
        {
            let mut missing_since = self.missing_since.lock().expect("missing nodes");
            for (_, p) in &pods {
                let node = s(p, "/spec/nodeName");
                if !node.is_empty() && !nodes.contains(node) {
                    orphaned_on.insert(node.to_string());
                    let since = *missing_since
                        .entry(node.to_string())
                        .or_insert_with(Instant::now);
                    if since.elapsed() >= QUARANTINE {
                        doomed.push(p.clone());
                    }
                } else if terminal(p) {
                    finished.push(p);
                }
            }
            missing_since.retain(|n, _| orphaned_on.contains(n));
        }
        for p in doomed {
            let (ns, name, node) = (
                s(&p, "/metadata/namespace"),
                s(&p, "/metadata/name"),
                s(&p, "/spec/nodeName"),
            );
            match c
                .force_delete(&pods_rt, ns, name, s(&p, "/metadata/uid"))
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
