//! Several servers, one cluster. Each server announces its address with a
//! Lease in kube-system that it renews; the live ones (fresh leases) make
//! the server list that agents balance over and that `/v1-rk3s/apiservers`
//! and the `default/kubernetes` Endpoints publish. One server at a time
//! holds the leader Lease and runs the singleton work (node monitor,
//! compaction, the Endpoints); the others take over when it stops renewing.
//!
//! Leases are ordinary objects in the datastore, so with SQLite the only
//! server simply wins every election; with PostgreSQL the datastore's
//! optimistic concurrency (update at a revision) decides who acquires.

use crate::datastore::objects::{self, now_micro, parse_time, ObjectError, Objects, Ref};
use crate::datastore::DatastoreError;
use crate::registry::error::KubeError;
use crate::registry::Registry;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const LEASE_NAMESPACE: &str = "kube-system";
/// The leader Lease, `kube-system/rk3s-leader`.
pub const LEADER_LEASE: &str = "rk3s-leader";
const SERVER_LEASE_PREFIX: &str = "rk3s-apiserver-";
/// Label on server Leases, so they can be listed apart from others.
pub const LABEL_APISERVER: &str = "rk3s.io/apiserver";
/// Annotation on a server Lease: the `host:port` agents reach it at.
pub const ANNOTATION_ADDRESS: &str = "rk3s.io/address";

/// Election timings; the defaults are Kubernetes' leader-election ones.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// A lease not renewed for this long is dead (server or leader).
    pub lease_duration: Duration,
    /// How often leases are renewed and elections retried.
    pub retry_period: Duration,
}

impl Timings {
    /// A leader that could not renew for this long steps down on its own,
    /// before anyone else may take over (2/3 of the lease).
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

fn server_lease(name: &str) -> Ref {
    Ref::namespaced(
        "leases",
        LEASE_NAMESPACE,
        &format!("{SERVER_LEASE_PREFIX}{name}"),
    )
}

fn leader_lease() -> Ref {
    Ref::namespaced("leases", LEASE_NAMESPACE, LEADER_LEASE)
}

fn lease_expired(lease: &Value, now: chrono::DateTime<chrono::Utc>) -> bool {
    let renewed = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let secs = lease
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(15);
    renewed.is_none_or(|t| now - t > chrono::Duration::seconds(secs))
}

fn lease_seconds(d: Duration) -> i64 {
    (d.as_secs_f64().ceil() as i64).max(1)
}

/// What this server knows about the cluster's servers.
pub struct Membership {
    pub name: String,
    pub address: String,
    timings: Timings,
    servers: watch::Sender<Vec<String>>,
    leader: watch::Sender<bool>,
    leader_name: Mutex<String>,
}

impl Membership {
    pub fn new(name: &str, address: &str, timings: Timings) -> Self {
        Self {
            name: name.to_string(),
            address: address.to_string(),
            timings,
            servers: watch::channel(vec![address.to_string()]).0,
            leader: watch::channel(false).0,
            leader_name: Mutex::new(String::new()),
        }
    }

    /// Live server addresses, sorted; this server's own is always there.
    pub fn servers(&self) -> Vec<String> {
        self.servers.borrow().clone()
    }

    pub fn watch_servers(&self) -> watch::Receiver<Vec<String>> {
        self.servers.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    pub fn watch_leader(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// The current leader's name as last seen, empty if unknown.
    pub fn leader_name(&self) -> String {
        self.leader_name.lock().expect("lock").clone()
    }
}

/// Renew (or create) this server's address Lease.
async fn announce(objects: &Objects, m: &Membership) -> objects::Result<()> {
    let r = server_lease(&m.name);
    let now = now_micro();
    let secs = lease_seconds(m.timings.lease_duration);
    let updated = objects
        .raw()
        .modify(&r, |l| {
            l["spec"]["renewTime"] = json!(now);
            l["spec"]["leaseDurationSeconds"] = json!(secs);
            l["metadata"]["annotations"][ANNOTATION_ADDRESS] = json!(m.address);
            true
        })
        .await?;
    if updated.is_some() {
        return Ok(());
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"labels": {LABEL_APISERVER: "true"}, "annotations": {ANNOTATION_ADDRESS: m.address}},
        "spec": {"holderIdentity": m.name, "leaseDurationSeconds": secs, "renewTime": now},
    });
    objects.raw().create_if_absent(&r, lease).await.map(|_| ())
}

/// The address of server `name`, if its Lease is fresh.
pub async fn server_address(objects: &Objects, name: &str) -> objects::Result<Option<String>> {
    let lease = objects.get(&server_lease(name)).await?;
    Ok(lease
        .filter(|l| !lease_expired(l, chrono::Utc::now()))
        .and_then(|l| {
            l.pointer("/metadata/annotations")?
                .get(ANNOTATION_ADDRESS)?
                .as_str()
                .map(str::to_string)
        }))
}

/// Addresses of the servers whose Leases are fresh, sorted.
pub async fn live_servers(objects: &Objects) -> objects::Result<Vec<String>> {
    let (_, leases) = objects.list("leases", Some(LEASE_NAMESPACE)).await?;
    let now = chrono::Utc::now();
    let mut out: Vec<String> = leases
        .iter()
        .filter(|l| {
            l.pointer("/metadata/labels")
                .and_then(|x| x.get(LABEL_APISERVER))
                .is_some()
        })
        .filter(|l| !lease_expired(l, now))
        .filter_map(|l| {
            l.pointer("/metadata/annotations")?
                .get(ANNOTATION_ADDRESS)?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// One election round: acquire the leader Lease if free or expired, renew
/// it if ours. Returns whether this server leads, and the holder's name.
async fn elect(objects: &Objects, m: &Membership) -> objects::Result<(bool, String)> {
    let r = leader_lease();
    let now = chrono::Utc::now();
    let stamp = now_micro();
    let secs = lease_seconds(m.timings.lease_duration);
    match objects.get(&r).await? {
        None => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {},
                "spec": {"holderIdentity": m.name, "leaseDurationSeconds": secs,
                         "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0},
            });
            let won = objects.raw().create_if_absent(&r, lease).await?;
            Ok((won, if won { m.name.clone() } else { String::new() }))
        }
        Some(mut lease) => {
            let holder = lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let ours = holder == m.name;
            if !ours && !holder.is_empty() && !lease_expired(&lease, now) {
                return Ok((false, holder));
            }
            if !ours {
                let transitions = lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
                lease["spec"]["holderIdentity"] = json!(m.name);
                lease["spec"]["acquireTime"] = json!(stamp);
                lease["spec"]["leaseTransitions"] = json!(transitions + 1);
            }
            lease["spec"]["renewTime"] = json!(stamp);
            lease["spec"]["leaseDurationSeconds"] = json!(secs);
            // At the revision we read: if another server got there first,
            // this is a Conflict and it leads.
            match objects.raw().update(&r, lease).await {
                Ok(_) => {
                    if !ours {
                        tracing::info!(server = %m.name, previous = %holder, "acquired the leader lease");
                    }
                    Ok((true, m.name.clone()))
                }
                Err(ObjectError::Store(DatastoreError::Conflict { .. }))
                | Err(ObjectError::Store(DatastoreError::NotFound(_))) => {
                    Ok((false, String::new()))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Give up the leader Lease and the address Lease on a clean shutdown, so
/// the others take over at once instead of after the lease duration.
pub async fn resign(objects: &Objects, m: &Membership) {
    if m.is_leader() {
        let r = leader_lease();
        let _ = objects
            .raw()
            .modify(&r, |l| {
                if l["spec"]["holderIdentity"] != json!(m.name) {
                    return false;
                }
                l["spec"]["holderIdentity"] = json!("");
                true
            })
            .await;
        m.leader.send_replace(false);
    }
    let _ = objects.raw().delete(&server_lease(&m.name)).await;
}

/// Renew, elect, refresh the server list: every `retry_period` until
/// cancelled. The list and leadership are published through `m`.
pub async fn run(objects: Objects, m: std::sync::Arc<Membership>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(m.timings.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = announce(&objects, &m).await {
            tracing::warn!(error = %e, "could not renew this server's lease; will retry");
        }
        match live_servers(&objects).await {
            Ok(mut list) => {
                if !list.contains(&m.address) {
                    list.push(m.address.clone());
                    list.sort();
                }
                m.servers.send_if_modified(|cur| {
                    if *cur == list {
                        return false;
                    }
                    tracing::info!(servers = ?list, "server list changed");
                    *cur = list;
                    true
                });
            }
            Err(e) => tracing::debug!(error = %e, "could not list servers"),
        }
        match elect(&objects, &m).await {
            Ok((leads, holder)) => {
                if leads {
                    last_renewed = Instant::now();
                }
                *m.leader_name.lock().expect("lock") = holder;
                if m.leader.send_replace(leads) != leads && !leads {
                    tracing::warn!(server = %m.name, "lost the leader lease");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed; will retry");
                if m.is_leader() && last_renewed.elapsed() > m.timings.renew_deadline() {
                    tracing::warn!(server = %m.name, "could not renew the leader lease in time; stepping down");
                    m.leader.send_replace(false);
                }
            }
        }
    }
}

/// Run `work` (a fresh future per term) while this server leads; stop it
/// when leadership is lost, start it again when it comes back.
pub async fn while_leader<F, Fut>(m: std::sync::Arc<Membership>, cancel: CancellationToken, work: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut rx = m.watch_leader();
    loop {
        while !*rx.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
        let term = cancel.child_token();
        let task = tokio::spawn(work(term.clone()));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = rx.changed() => {
                    if r.is_err() || !*rx.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        term.cancel();
        let _ = task.await;
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// Keep `default/kubernetes` Endpoints listing the live servers (one
/// subset per port). The leader runs this.
pub async fn reconcile_endpoints(registry: &Registry, servers: &[String]) -> Result<(), KubeError> {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for s in servers {
        let Some((host, port)) = s.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        let ip = host.trim_start_matches('[').trim_end_matches(']');
        by_port.entry(port).or_default().push(ip.to_string());
    }
    let subsets: Vec<Value> = by_port
        .into_iter()
        .map(|(port, ips)| {
            json!({"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                   "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let subsets = Value::Array(subsets);
    let ep = Ref::namespaced("endpoints", "default", "kubernetes");
    let updated = registry
        .modify_at(&ep, |e| {
            if e["subsets"] == subsets {
                return false;
            }
            e["subsets"] = subsets.clone();
            true
        })
        .await?;
    if updated.is_none() {
        let obj = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}, "subsets": subsets});
        match registry.create_at(&ep, obj).await {
            Ok(_) | Err(KubeError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the `default/kubernetes` Service points at.
#[derive(Debug, Clone)]
pub struct KubernetesService {
    /// The API's port (the Service's targetPort).
    pub port: u16,
    /// The first address of `--service-cidr`.
    pub ip: String,
}

/// Create the `default/kubernetes` Service unless it exists, through the
/// registry's write path (its address is claimed as any Service's is).
pub async fn ensure_service(
    registry: &Registry,
    svc: &KubernetesService,
) -> Result<bool, KubeError> {
    let rt = crate::registry::kinds::SERVICES.resource_type();
    let r = Ref::namespaced("services", "default", "kubernetes");
    let exists = || async {
        registry
            .objects
            .get(&r)
            .await
            .map(|o| o.is_some())
            .map_err(|e| KubeError::Unavailable(e.to_string()))
    };
    let mut attempt = 0;
    loop {
        if exists().await? {
            return Ok(false);
        }
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": svc.ip, "clusterIPs": [svc.ip], "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": svc.port}]}});
        match registry
            .create(&rt, Some("default"), obj, &Default::default())
            .await
        {
            Ok(_) => return Ok(true),
            // Another server starting at the same moment may hold the
            // address claim with its Service not stored yet: look again
            // shortly.
            Err(e) => {
                attempt += 1;
                if attempt >= ENSURE_ATTEMPTS {
                    return if exists().await? { Ok(false) } else { Err(e) };
                }
                tokio::time::sleep(ENSURE_RETRY).await;
            }
        }
    }
}

/// Tries (and the pause between them) before `ensure_service` gives up
/// for now; the leader tries again every 10 s.
const ENSURE_ATTEMPTS: u32 = 10;
const ENSURE_RETRY: Duration = Duration::from_millis(200);

/// How often the leader checks the `kubernetes` Service and Endpoints
/// even when the server list did not change (upstream's reconciler
/// interval), so a deleted Service or Endpoints comes back.
const KUBERNETES_SERVICE_INTERVAL: Duration = Duration::from_secs(10);

/// Leader work: the `kubernetes` Service exists and its Endpoints follow
/// the server list.
pub async fn endpoints_loop(
    registry: std::sync::Arc<Registry>,
    m: std::sync::Arc<Membership>,
    svc: KubernetesService,
) {
    let mut rx = m.watch_servers();
    let mut tick = tokio::time::interval(KUBERNETES_SERVICE_INTERVAL);
    loop {
        let servers = rx.borrow_and_update().clone();
        loop {
            let r = match ensure_service(&registry, &svc).await {
                Ok(created) => {
                    if created {
                        tracing::info!("recreated the default/kubernetes Service");
                    }
                    reconcile_endpoints(&registry, &servers)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "could not update the kubernetes Service or Endpoints; will retry");
                    tokio::time::sleep(m.timings.retry_period).await;
                }
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{sqlite::SqliteBackend, Datastore};
    use std::sync::Arc;

    fn objects() -> (tempfile::TempDir, Objects) {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(&dir.path().join("s.db")).unwrap();
        (dir, Objects::new(Datastore::new(Arc::new(b))))
    }

    fn timings(ms: u64) -> Timings {
        Timings {
            lease_duration: Duration::from_millis(ms),
            retry_period: Duration::from_millis(ms / 4),
        }
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_takeover_after_expiry() {
        let (_d, o) = objects();
        let a = Membership::new("a", "10.0.0.1:6443", timings(1000));
        let b = Membership::new("b", "10.0.0.2:6443", timings(1000));
        assert_eq!(elect(&o, &a).await.unwrap(), (true, "a".into()));
        assert_eq!(elect(&o, &b).await.unwrap(), (false, "a".into()));
        assert_eq!(elect(&o, &a).await.unwrap(), (true, "a".into()), "renewal");
        // a stops renewing: b takes over once the (1 s, rounded up) lease expires.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(elect(&o, &b).await.unwrap(), (true, "b".into()));
        assert_eq!(elect(&o, &a).await.unwrap(), (false, "b".into()));
        let lease = o.get(&leader_lease()).await.unwrap().unwrap();
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
    }

    #[tokio::test]
    async fn a_resigned_leader_is_replaced_at_once_and_its_address_drops() {
        let (_d, o) = objects();
        let a = Membership::new("a", "10.0.0.1:6443", timings(60_000));
        let b = Membership::new("b", "10.0.0.2:6443", timings(60_000));
        announce(&o, &a).await.unwrap();
        announce(&o, &b).await.unwrap();
        assert_eq!(
            live_servers(&o).await.unwrap(),
            vec!["10.0.0.1:6443", "10.0.0.2:6443"]
        );
        assert!(elect(&o, &a).await.unwrap().0);
        a.leader.send_replace(true);
        resign(&o, &a).await;
        assert!(elect(&o, &b).await.unwrap().0);
        assert_eq!(live_servers(&o).await.unwrap(), vec!["10.0.0.2:6443"]);
    }

    #[tokio::test]
    async fn endpoints_group_servers_by_port() {
        let (_d, o) = objects();
        let servers: Vec<String> = ["10.0.0.1:6443", "10.0.0.2:6443", "127.0.0.1:7000"]
            .map(String::from)
            .into();
        let registry = Registry::new(o.clone()).await;
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        registry
            .create_at(&Ref::cluster("namespaces", "default"), ns)
            .await
            .unwrap();
        reconcile_endpoints(&registry, &servers).await.unwrap();
        let ep = o
            .get(&Ref::namespaced("endpoints", "default", "kubernetes"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ep["subsets"][0]["addresses"][1]["ip"], "10.0.0.2");
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 6443);
        assert_eq!(ep["subsets"][1]["addresses"][0]["ip"], "127.0.0.1");
    }
}
