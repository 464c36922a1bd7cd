//! Controllers the elected leader runs over the registry: the garbage
//! collector (ownerReferences, foreground/orphan deletion), the pod GC,
//! node lifecycle (condition taints, NoExecute evictions), Service
//! endpoints and allocation repair, namespace
//! termination, ClusterRole aggregation, the service-account plumbing,
//! the scheduler, and the workload controllers (ReplicaSet and
//! ReplicationController, Deployment, DaemonSet, StatefulSet, Job,
//! CronJob), and the HorizontalPodAutoscaler. They read the watch cache
//! and write through the registry, like any other client.

pub mod allocations;
pub mod apiservices;
pub mod autoscaler;
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

/// What the controllers take from the server's flags
/// (`--kube-controller-manager-arg`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub autoscaler: autoscaler::Settings,
}

/// What the controllers need from outside the registry.
pub struct Inputs {
    pub auth: Arc<crate::auth::Auth>,
    /// The cluster CA, for service-account token Secrets.
    pub ca_pem: String,
    pub events: recorder::Recorder,
    /// Resource, custom and external metrics, for the HorizontalPodAutoscaler.
    pub metrics: Arc<dyn autoscaler::MetricsSource>,
    /// Whether an extension API server answers (APIService availability).
    pub extensions: Arc<dyn apiservices::ExtensionProbe>,
    /// The client CA, published for extension API servers.
    pub client_ca_pem: String,
    pub settings: Settings,
}

/// Run every controller until `stop` (the end of a leadership term).
pub async fn run(registry: Arc<Registry>, inputs: Inputs, stop: CancellationToken) {
    let Inputs {
        auth,
        ca_pem,
        events,
        metrics,
        extensions,
        client_ca_pem,
        settings,
    } = inputs;
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
        apiservices::controller(registry.clone(), cache.clone(), extensions, client_ca_pem)
            .run(cache.clone(), stop.clone()),
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
        cronjob::controller(client.clone(), cache.clone()).run(cache.clone(), stop.clone()),
        autoscaler::controller(client, cache.clone(), metrics, settings.autoscaler)
            .run(cache.clone(), stop.clone()),
        accounts.run(cache.clone(), stop.clone()),
        tokens.run(cache, stop),
    );
}
