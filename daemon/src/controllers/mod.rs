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
pub mod crds;
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
pub mod predicates;
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
    events: recorder::Recorder,
    stop: CancellationToken,
) {
    let cache = Arc::new(Cache::default());
    let client = client::Client::new(registry.clone(), events);
    let feed = {
        let (c, o, s) = (cache.clone(), registry.objects.clone(), stop.clone());
        async move { c.run(o, s).await }
    };
    let (accounts, tokens) =
        serviceaccounts::controllers(registry.clone(), cache.clone(), auth, ca_pem);
    tokio::join!(
        feed,
        gc::controller(registry.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        crds::controller(registry.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        namespace::controller(registry.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        clusterroles::controller(registry.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        scheduler::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        replicaset::controller(client.clone(), cache.clone(), replicaset::REPLICA_SETS)
            .run(cache.clone(), stop.clone()),
        replicaset::controller(
            client.clone(),
            cache.clone(),
            replicaset::REPLICATION_CONTROLLERS
        )
        .run(cache.clone(), stop.clone()),
        deployment::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        daemonset::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        statefulset::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        job::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        nodelifecycle::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        endpoints::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        allocations::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        podgc::controller(client.clone(), cache.clone(), podgc::TERMINATED_THRESHOLD)
            .run(cache.clone(), stop.clone()),
        cronjob::controller(client, cache.clone()).run(cache.clone(), stop.clone()),
        accounts.run(cache.clone(), stop.clone()),
        tokens.run(cache, stop),
    );
}
