//! Controllers the elected leader runs over the registry: the garbage
//! collector (ownerReferences, foreground/orphan deletion), the pod GC,
//! node lifecycle (condition taints, NoExecute evictions), Service
//! endpoints and allocation repair, namespace
//! termination, ClusterRole aggregation, the service-account plumbing,
//! the scheduler, and the workload controllers (ReplicaSet and
//! ReplicationController, Deployment, DaemonSet, StatefulSet, Job,
//! CronJob). They read the watch cache and write through the registry,
//! like any other client.

pub mod allocations;
pub mod client;
pub mod clusterroles;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod podgc;
pub mod recorder;
pub mod replicaset;
pub mod revisions;
pub mod runtime;
pub mod scheduler;
pub mod serviceaccounts;
pub mod statefulset;

use crate::registry::cache::Cache;
use crate::registry::Registry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Run every controller until `stop` (the end of a leadership term).
pub async fn run(
    registry: Arc<Registry>,
    auth: Arc<crate::auth::Auth>,
    ca_pem: String,
    stop: CancellationToken,
) {
    let cache = Arc::new(Cache::default());
    let client = client::Client::new(registry.clone());
    let feed = {
        let (c, o, s) = (cache.clone(), registry.objects.clone(), stop.clone());
        async move { c.run(o, s).await }
    };
    tokio::join!(
        feed,
        gc::run(registry.clone(), cache.clone(), stop.clone()),
        namespace::run(registry.clone(), cache.clone(), stop.clone()),
        clusterroles::run(registry.clone(), cache.clone(), stop.clone()),
        scheduler::run(client.clone(), cache.clone(), stop.clone()),
        replicaset::run(
            client.clone(),
            cache.clone(),
            replicaset::REPLICA_SETS,
            stop.clone()
        ),
        replicaset::run(
            client.clone(),
            cache.clone(),
            replicaset::REPLICATION_CONTROLLERS,
            stop.clone()
        ),
        deployment::run(client.clone(), cache.clone(), stop.clone()),
        daemonset::run(client.clone(), cache.clone(), stop.clone()),
        statefulset::run(client.clone(), cache.clone(), stop.clone()),
        job::run(client.clone(), cache.clone(), stop.clone()),
        nodelifecycle::run(client.clone(), cache.clone(), stop.clone()),
        endpoints::run(client.clone(), cache.clone(), stop.clone()),
        allocations::run(client.clone(), cache.clone(), stop.clone()),
        podgc::run(
            client.clone(),
            cache.clone(),
            podgc::TERMINATED_THRESHOLD,
            stop.clone()
        ),
        cronjob::run(client, cache.clone(), stop.clone()),
        serviceaccounts::run(registry, cache, auth, ca_pem, stop),
    );
}
