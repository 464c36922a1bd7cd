//! Node IPAM: each node gets a pod CIDR (`spec.podCIDR`) carved from the
//! cluster CIDR (`--cluster-cidr`, K3s's 10.42.0.0/16, a /24 each by
//! `--node-cidr-mask-size`). The datastore decides who owns a block: a
//! claim `/rk3s/podcidrs/<n>` created with create-if-absent, so two
//! servers cannot hand out the same one. A forgotten node's block is
//! released.

use crate::datastore::{Datastore, DatastoreError};
use crate::objects::{self, Objects};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

const PREFIX: &str = "/rk3s/podcidrs/";

/// The cluster CIDR and the size of each node's block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ipam {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub node_prefix: u8,
}

impl Default for Ipam {
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(10, 42, 0, 0),
            prefix: 16,
            node_prefix: 24,
        }
    }
}

impl Ipam {
    /// Parse `10.42.0.0/16` and a node mask size, or say what is wrong.
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<Self, String> {
        let (network, prefix) = crate::registry::ranges::parse_cidr(cidr)?;
        if node_prefix < prefix || node_prefix > 30 || node_prefix - prefix > 16 {
            return Err(format!(
                "node CIDR mask size {node_prefix} must be between {prefix} and 30, at most 16 more than the cluster CIDR's"
            ));
        }
        Ok(Self {
            network,
            prefix,
            node_prefix,
        })
    }

    /// The cluster CIDR, `10.42.0.0/16`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    pub fn blocks(&self) -> u32 {
        1 << (self.node_prefix - self.prefix)
    }

    /// The `n`th node block.
    pub fn block(&self, n: u32) -> String {
        let base = u32::from(self.network) + (n << (32 - self.node_prefix));
        format!("{}/{}", Ipv4Addr::from(base), self.node_prefix)
    }
}

/// The block `node` owns, claiming the first free one if it has none.
/// `None` when the cluster CIDR is exhausted.
pub async fn claim(
    store: &Datastore,
    ipam: &Ipam,
    node: &str,
) -> Result<Option<String>, DatastoreError> {
    let (_, claims) = store.list(PREFIX).await?;
    let mut taken = std::collections::HashSet::new();
    for kv in &claims {
        let owner = String::from_utf8_lossy(&kv.value).to_string();
        let Some(n) = kv
            .key
            .strip_prefix(PREFIX)
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == node {
            return Ok(Some(ipam.block(n)));
        }
        taken.insert(n);
    }
    for n in (0..ipam.blocks()).filter(|n| !taken.contains(n)) {
        match store
            .create(&format!("{PREFIX}{n}"), node.as_bytes().to_vec())
            .await
        {
            Ok(_) => return Ok(Some(ipam.block(n))),
            // Another server claimed it a moment ago.
            Err(DatastoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Release the blocks `node` owns.
pub async fn release(store: &Datastore, node: &str) -> Result<(), DatastoreError> {
    let (_, claims) = store.list(PREFIX).await?;
    for kv in claims.iter().filter(|kv| kv.value == node.as_bytes()) {
        match store.delete(&kv.key, Some(kv.mod_revision)).await {
            Ok(_) | Err(DatastoreError::NotFound(_)) | Err(DatastoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Give `node` its pod CIDR if it has none yet.
pub async fn assign(objects: &Objects, ipam: &Ipam, node: &str) -> objects::Result<()> {
    let r = crate::lifecycle::node_ref(node);
    let Some(current) = objects.get(&r).await? else {
        return Ok(());
    };
    if current
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some()
    {
        return Ok(());
    }
    let Some(cidr) = claim(&objects.store, ipam, node).await? else {
        tracing::warn!(node, cluster_cidr = %ipam.cidr(),
            "no pod CIDR left for this node: the cluster CIDR is exhausted (forget unused nodes or widen --cluster-cidr)");
        cidr_not_available(objects, &current).await?;
        return Ok(());
    };
    objects
        .modify(&r, |n| {
            if n.pointer("/spec/podCIDR").is_some() {
                return false;
            }
            n["spec"]["podCIDR"] = json!(cidr);
            n["spec"]["podCIDRs"] = json!([cidr]);
            true
        })
        .await?;
    tracing::info!(node, pod_cidr = %cidr, "assigned the node's pod CIDR");
    Ok(())
}

/// Upstream's range allocator reports exhaustion as a `CIDRNotAvailable`
/// Event on the Node (`kubectl describe node` shows it); every further
/// attempt raises its count.
async fn cidr_not_available(objects: &Objects, node: &Value) -> objects::Result<()> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let uid = node.pointer("/metadata/uid").cloned().unwrap_or_default();
    let r = objects::Ref::namespaced("events", "default", &format!("{name}.cidrnotavailable"));
    let now = objects::now_rfc3339();
    let bumped = objects
        .modify(&r, |ev| {
            if ev["involvedObject"]["uid"] != uid {
                return false;
            }
            ev["count"] = json!(ev["count"].as_i64().unwrap_or(1) + 1);
            ev["lastTimestamp"] = json!(now);
            true
        })
        .await?;
    if bumped
        .as_ref()
        .is_some_and(|ev| ev["involvedObject"]["uid"] == uid)
    {
        return Ok(());
    }
    if bumped.is_some() {
        // An Event about an earlier Node of the same name.
        objects.delete(&r).await?;
    }
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid},
        "type": "Normal", "reason": "CIDRNotAvailable",
        "message": format!("Node {name} status is now: CIDRNotAvailable"),
        "source": {"component": "cidrAllocator"}, "reportingComponent": "cidrAllocator",
        "count": 1, "firstTimestamp": now, "lastTimestamp": now});
    objects.create_if_absent(&r, ev).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_parsing() {
        let i = Ipam::default();
        assert_eq!(i.blocks(), 256);
        assert_eq!(i.block(0), "10.42.0.0/24");
        assert_eq!(i.block(255), "10.42.255.0/24");
        let j = Ipam::parse("10.10.0.0/20", 26).unwrap();
        assert_eq!(j.blocks(), 64);
        assert_eq!(j.block(1), "10.10.0.64/26");
        assert!(Ipam::parse("10.42.0.1/16", 24)
            .unwrap_err()
            .contains("host bits"));
        assert!(Ipam::parse("10.42.0.0", 24).is_err());
        assert!(Ipam::parse("10.42.0.0/16", 8).is_err());
    }

    #[tokio::test]
    async fn claims_are_unique_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let backend =
            crate::datastore::sqlite::SqliteBackend::open(&dir.path().join("s.db")).unwrap();
        let store = Datastore::new(std::sync::Arc::new(backend));
        // Two /30 blocks in a /29.
        let i = Ipam::parse("10.0.0.0/29", 30).unwrap();
        assert_eq!(
            claim(&store, &i, "a").await.unwrap().as_deref(),
            Some("10.0.0.0/30")
        );
        assert_eq!(
            claim(&store, &i, "b").await.unwrap().as_deref(),
            Some("10.0.0.4/30")
        );
        assert_eq!(
            claim(&store, &i, "a").await.unwrap().as_deref(),
            Some("10.0.0.0/30")
        );
        assert_eq!(claim(&store, &i, "c").await.unwrap(), None, "exhausted");
        // A node that gets none is told so on an Event, counted per try.
        let objects = Objects::new(store.clone());
        let node = objects::Ref::cluster("nodes", "c");
        objects
            .create(&node, json!({"apiVersion": "v1", "kind": "Node"}))
            .await
            .unwrap();
        for _ in 0..2 {
            assign(&objects, &i, "c").await.unwrap();
        }
        let ev = objects
            .get(&objects::Ref::namespaced(
                "events",
                "default",
                "c.cidrnotavailable",
            ))
            .await
            .unwrap()
            .expect("a CIDRNotAvailable event");
        assert_eq!(ev["reason"], "CIDRNotAvailable");
        assert_eq!(ev["message"], "Node c status is now: CIDRNotAvailable");
        assert_eq!(ev["involvedObject"]["name"], "c");
        assert_eq!(ev["count"], 2);
        let n = objects.get(&node).await.unwrap().unwrap();
        assert!(n.pointer("/spec/podCIDR").is_none());
        release(&store, "a").await.unwrap();
        assert_eq!(
            claim(&store, &i, "c").await.unwrap().as_deref(),
            Some("10.0.0.0/30")
        );
    }
}
