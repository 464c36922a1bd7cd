//! Service cluster IPs (`--service-cidr`, K3s's 10.43.0.0/16) and node
//! ports (`--service-node-port-range`, 30000-32767), allocated when a
//! Service is written and released when it goes.
//!
//! Each value held is a key of its own, `/rk3s/serviceips/<ip>` or
//! `/rk3s/nodeports/<port>`, created with create-if-absent: the datastore
//! decides, so two servers never hand out the same one. The first address
//! (the `kubernetes` Service's) and the tenth (the cluster DNS's) are only
//! given to a Service that asks for them. A repair pass on the leader
//! claims what stored Services hold and drops claims nobody holds (a
//! server that died between claiming and writing).

use super::allocate::{Allocate, Claims};
use super::core::{wants_cluster_ip, wants_node_ports};
use super::error::{FieldError, KubeError, Raw};
use crate::datastore::{Datastore, DatastoreError};
use k8s_openapi::api::core::v1::Service;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

const IPS: &str = "/rk3s/serviceips/";
const PORTS: &str = "/rk3s/nodeports/";
/// A claim younger than this may belong to a write still under way.
const REPAIR_GRACE: chrono::Duration = chrono::Duration::minutes(1);

/// The two ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRanges {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub ports: (u16, u16),
}

impl Default for ServiceRanges {
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
            ports: (30000, 32767),
        }
    }
}

impl ServiceRanges {
    /// Parse `10.43.0.0/16` and `30000-32767`, or say what is wrong.
    pub fn parse(cidr: &str, ports: &str) -> Result<Self, String> {
        let (network, prefix) = parse_cidr(cidr)?;
        if !(8..=28).contains(&prefix) {
            return Err(format!(
                "{cidr:?}: the prefix length must be between 8 and 28"
            ));
        }
        let (lo, hi) = ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| 0 < *a && a <= b)
            .ok_or_else(|| format!("{ports:?} is not a port range like 30000-32767"))?;
        Ok(Self {
            network,
            prefix,
            ports: (lo, hi),
        })
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// The `n`th address of the range.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// The `kubernetes` Service's address.
    pub fn api_ip(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The cluster DNS address K3s reserves.
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.nth(10)
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let off = u32::from(ip).wrapping_sub(u32::from(self.network));
        // Neither the network nor the broadcast address.
        off > 0 && off < self.size() - 1
    }

    /// Addresses handed out without being asked for.
    fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.api_ip() && ip != self.dns_ip()
    }
}

/// An IPv4 network `a.b.c.d/n` without host bits, or what is wrong with it
/// (the pod and the service CIDR flags both read it).
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR like 10.42.0.0/16"))?;
    let network: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{cidr:?}: {ip:?} is not an IPv4 address"))?;
    let prefix: u8 = len
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{cidr:?}: {len:?} is not a prefix length"))?;
    let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    if u32::from(network) & host_bits != 0 {
        return Err(format!("{cidr:?} has host bits set"));
    }
    Ok((network, prefix))
}

/// The allocator over a datastore.
pub struct Allocator {
    pub ranges: ServiceRanges,
    store: Datastore,
}

fn owner_of(v: &Value) -> Value {
    json!({"namespace": v["metadata"]["namespace"], "name": v["metadata"]["name"],
        "uid": v["metadata"]["uid"], "at": crate::datastore::objects::now_rfc3339()})
}

fn invalid(svc: &Value, errors: Vec<FieldError>) -> KubeError {
    KubeError::Invalid {
        kind: "Service".into(),
        name: svc["metadata"]["name"].as_str().unwrap_or("").into(),
        errors,
    }
}

fn internal(e: DatastoreError) -> KubeError {
    KubeError::Internal(format!("allocating a Service value: {e}"))
}

impl Allocator {
    pub fn new(ranges: ServiceRanges, store: Datastore) -> Self {
        Self { ranges, store }
    }

    /// Claim `key` for `svc`: true if it is now (or already was) its own.
    async fn claim(&self, key: &str, svc: &Value) -> Result<bool, KubeError> {
        let body = serde_json::to_vec(&owner_of(svc)).expect("json");
        match self.store.create(key, body).await {
            Ok(_) => Ok(true),
            Err(DatastoreError::AlreadyExists(_)) => {
                let held = self.store.get(key).await.map_err(internal)?;
                Ok(held.is_some_and(|kv| {
                    serde_json::from_slice::<Value>(&kv.value)
                        .is_ok_and(|o| o["uid"] == svc["metadata"]["uid"])
                }))
            }
            Err(e) => Err(internal(e)),
        }
    }

    async fn release_key(&self, key: &str) {
        match self.store.delete(key, None).await {
            Ok(_) | Err(DatastoreError::NotFound(_)) => {}
            Err(e) => tracing::warn!(key, error = %e, "could not release a Service allocation"),
        }
    }

    /// A free address: random picks first, then a scan of what is taken.
    async fn any_ip(&self, svc: &Value) -> Result<(Ipv4Addr, String), KubeError> {
        for _ in 0..8 {
            let ip = self
                .ranges
                .nth(rand::thread_rng().gen_range(1..self.ranges.size() - 1));
            if !self.ranges.assignable(ip) {
                continue;
            }
            let key = format!("{IPS}{ip}");
            if self
                .store
                .create(&key, serde_json::to_vec(&owner_of(svc)).expect("json"))
                .await
                .is_ok()
            {
                return Ok((ip, key));
            }
        }
        let (_, taken) = self.store.list(IPS).await.map_err(internal)?;
        let taken: BTreeSet<String> = taken.into_iter().map(|kv| kv.key).collect();
        for n in 1..self.ranges.size() - 1 {
            let ip = self.ranges.nth(n);
            let key = format!("{IPS}{ip}");
            if !self.ranges.assignable(ip) || taken.contains(&key) {
                continue;
            }
            if self.claim(&key, svc).await? {
                return Ok((ip, key));
            }
        }
        Err(KubeError::Internal(
            "failed to allocate a serviceIP: range is full".into(),
        ))
    }

    async fn any_port(
        &self,
        svc: &Value,
        avoid: &BTreeSet<u16>,
    ) -> Result<(u16, String), KubeError> {
        let (lo, hi) = self.ranges.ports;
        for _ in 0..8 {
            let p = rand::thread_rng().gen_range(lo..=hi);
            let key = format!("{PORTS}{p}");
            if !avoid.contains(&p)
                && self
                    .store
                    .create(&key, serde_json::to_vec(&owner_of(svc)).expect("json"))
                    .await
                    .is_ok()
            {
                return Ok((p, key));
            }
        }
        let (_, taken) = self.store.list(PORTS).await.map_err(internal)?;
        let taken: BTreeSet<String> = taken.into_iter().map(|kv| kv.key).collect();
        for p in lo..=hi {
            let key = format!("{PORTS}{p}");
            if avoid.contains(&p) || taken.contains(&key) {
                continue;
            }
            if self.claim(&key, svc).await? {
                return Ok((p, key));
            }
        }
        Err(KubeError::Internal(
            "failed to allocate a nodePort: range is full".into(),
        ))
    }

    async fn allocate(&self, obj: &mut Value, claims: &mut Claims) -> Result<(), KubeError> {
        let Ok(mut svc) = serde_json::from_value::<Service>(obj.clone()) else {
            return Ok(());
        };
        let Some(spec) = svc.spec.as_mut() else {
            return Ok(());
        };
        if wants_cluster_ip(spec) {
            match spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) {
                None => {
                    let (ip, key) = self.any_ip(obj).await?;
                    claims.0.push(key);
                    spec.cluster_ip = Some(ip.to_string());
                }
                Some(given) => {
                    let field = |msg: String| {
                        FieldError::invalid(
                            "spec.clusterIPs",
                            Raw(format!("[]string{{{given:?}}}")),
                            &msg,
                        )
                    };
                    let ip: Ipv4Addr = given.parse().map_err(|_| {
                        invalid(
                            obj,
                            vec![FieldError::invalid(
                                "spec.clusterIPs[0]",
                                &given,
                                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                            )],
                        )
                    })?;
                    if !self.ranges.contains(ip) {
                        return Err(invalid(obj, vec![field(format!(
                            "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            self.ranges.cidr()
                        ))]));
                    }
                    let key = format!("{IPS}{ip}");
                    let fresh = self.store.get(&key).await.map_err(internal)?.is_none();
                    if !self.claim(&key, obj).await? {
                        return Err(invalid(
                            obj,
                            vec![field(format!(
                                "failed to allocate IP {ip}: provided IP is already allocated"
                            ))],
                        ));
                    }
                    if fresh {
                        claims.0.push(key);
                    }
                }
            }
            spec.cluster_ips = spec.cluster_ip.clone().map(|ip| vec![ip]);
        }
        if wants_node_ports(spec) {
            let given: BTreeSet<u16> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.node_port.filter(|n| *n > 0).map(|n| n as u16))
                .collect();
            let mut assigned: HashMap<i32, i32> = HashMap::new();
            for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
                match p.node_port.filter(|n| *n > 0) {
                    Some(np) => {
                        let (lo, hi) = self.ranges.ports;
                        let f = format!("spec.ports[{i}].nodePort");
                        if np < i32::from(lo) || np > i32::from(hi) {
                            return Err(invalid(obj, vec![FieldError::invalid(&f, np, &format!(
                                "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                            ))]));
                        }
                        let key = format!("{PORTS}{np}");
                        let fresh = self.store.get(&key).await.map_err(internal)?.is_none();
                        if !self.claim(&key, obj).await? {
                            return Err(invalid(
                                obj,
                                vec![FieldError::invalid(
                                    &f,
                                    np,
                                    "provided port is already allocated",
                                )],
                            ));
                        }
                        if fresh {
                            claims.0.push(key);
                        }
                    }
                    None => {
                        // The same port number over two protocols shares a node port.
                        if let Some(np) = assigned.get(&p.port) {
                            p.node_port = Some(*np);
                            continue;
                        }
                        let (np, key) = self.any_port(obj, &given).await?;
                        claims.0.push(key);
                        p.node_port = Some(i32::from(np));
                        assigned.insert(p.port, i32::from(np));
                    }
                }
            }
        }
        *obj = serde_json::to_value(&svc).expect("json");
        Ok(())
    }
}

/// The keys a stored Service holds.
fn held(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(svc) = serde_json::from_value::<Service>(v.clone()) else {
        return out;
    };
    let Some(spec) = svc.spec else { return out };
    if wants_cluster_ip(&spec) {
        if let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) {
            out.insert(format!("{IPS}{ip}"));
        }
    }
    if wants_node_ports(&spec) {
        for p in spec.ports.iter().flatten() {
            if let Some(np) = p.node_port.filter(|n| *n > 0) {
                out.insert(format!("{PORTS}{np}"));
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl Allocate for Allocator {
    async fn claim(&self, obj: &mut Value, _old: Option<&Value>) -> Result<Claims, KubeError> {
        let mut claims = Claims::default();
        match self.allocate(obj, &mut claims).await {
            Ok(()) => Ok(claims),
            Err(e) => {
                self.undo(claims).await;
                Err(e)
            }
        }
    }

    async fn undo(&self, claims: Claims) {
        for key in claims.0 {
            self.release_key(&key).await;
        }
    }

    async fn release(&self, old: &Value, new: Option<&Value>) {
        let keep = new.map(held).unwrap_or_default();
        for key in held(old).difference(&keep) {
            self.release_key(key).await;
        }
    }

    async fn repair(&self, live: &[Value]) {
        let mut holders: HashMap<String, &Value> = HashMap::new();
        for v in live {
            for key in held(v) {
                if let Some(other) = holders.get(&key) {
                    tracing::warn!(key, a = %other["metadata"]["name"], b = %v["metadata"]["name"], "two Services hold the same value");
                    continue;
                }
                holders.insert(key.clone(), v);
                if let Err(e) = self.claim(&key, v).await {
                    tracing::warn!(key, error = %e, "could not record a Service's allocation");
                }
            }
        }
        let now = chrono::Utc::now();
        for prefix in [IPS, PORTS] {
            let Ok((_, claims)) = self.store.list(prefix).await else {
                continue;
            };
            for kv in claims {
                let owner: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                let young = owner["at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| now - t.with_timezone(&chrono::Utc) < REPAIR_GRACE);
                let holder = holders.get(&kv.key);
                if young || holder.is_some_and(|h| h["metadata"]["uid"] == owner["uid"]) {
                    continue;
                }
                if holder.is_none() {
                    tracing::info!(key = %kv.key, "released a Service allocation nothing holds");
                    let _ = self.store.delete(&kv.key, Some(kv.mod_revision)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reserve() {
        let r = ServiceRanges::parse("10.43.0.0/16", "30000-32767").unwrap();
        assert_eq!(r, ServiceRanges::default());
        assert_eq!(r.api_ip().to_string(), "10.43.0.1");
        assert_eq!(r.dns_ip().to_string(), "10.43.0.10");
        assert!(!r.assignable(r.api_ip()) && !r.assignable(r.dns_ip()));
        assert!(r.assignable("10.43.200.7".parse().unwrap()));
        assert!(!r.contains("10.43.255.255".parse().unwrap()));
        assert!(!r.contains("10.44.0.1".parse().unwrap()));
        assert!(ServiceRanges::parse("10.43.0.1/16", "30000-32767").is_err());
        assert!(ServiceRanges::parse("10.43.0.0/16", "32767-30000").is_err());
        assert!(ServiceRanges::parse("10.43.0.0/30", "1-2").is_err());
    }
}
