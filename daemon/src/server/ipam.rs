//! Node IPAM: each node gets a pod CIDR (`spec.podCIDR`) carved from the
//! cluster CIDR (`--cluster-cidr`, K3s's 10.42.0.0/16, a /24 each by
//! `--node-cidr-mask-size`). The datastore decides who owns a block: a
//! claim `/rk3s/podcidrs/<n>` created with create-if-absent, so two
//! servers cannot hand out the same one. A forgotten node's block is
//! released. Each server keeps what it knows of the claims in memory
//! ([`Claims`]) and learns the rest from creates that fail.

use crate::controllers::recorder::{reference, EventType, Recorder};
use crate::datastore::{Datastore, DatastoreError};
use crate::registry::{kinds, KubeError, Registry};
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

/// What this server knows of the claims. Loaded from the datastore once,
/// then kept by this server's own claims and releases and by what its
/// failed creates find. Listing every claim for every new node made ten
/// thousand registrations read fifty million claims.
#[derive(Default)]
pub struct Claims(std::sync::Mutex<Option<Known>>);

#[derive(Default)]
struct Known {
    /// Block → owner, and owner → block, kept together by `set`/`unset`.
    owners: std::collections::HashMap<u32, String>,
    blocks: std::collections::HashMap<String, u32>,
    /// Where the search for a free block starts.
    next: u32,
    loaded: Option<std::time::Instant>,
}

impl Known {
    fn set(&mut self, n: u32, owner: String) {
        self.unset(n);
        self.blocks.insert(owner.clone(), n);
        self.owners.insert(n, owner);
    }

    fn unset(&mut self, n: u32) {
        if let Some(o) = self.owners.remove(&n) {
            self.blocks.remove(&o);
        }
    }

    /// `node`'s block if known, else a block no one is known to hold
    /// (set to the node's while it is being claimed).
    fn pick(&mut self, ipam: &Ipam, node: &str) -> Option<Result<u32, u32>> {
        if let Some(n) = self.blocks.get(node) {
            return Some(Ok(*n));
        }
        let blocks = ipam.blocks();
        let free = (0..blocks)
            .map(|i| (self.next + i) % blocks)
            .find(|n| !self.owners.contains_key(n))?;
        self.set(free, node.to_string());
        self.next = (free + 1) % blocks;
        Some(Err(free))
    }
}

/// An exhausted range is read again from the datastore at most this often
/// (blocks released by other servers come back).
const RELOAD_WHEN_FULL: std::time::Duration = std::time::Duration::from_secs(30);

fn block_of(key: &str) -> Option<u32> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

async fn load(store: &Datastore) -> Result<Known, DatastoreError> {
    let (_, claims) = store.list(PREFIX).await?;
    let mut known = Known {
        loaded: Some(std::time::Instant::now()),
        ..Default::default()
    };
    for kv in &claims {
        if let Some(n) = block_of(&kv.key) {
            known.set(n, String::from_utf8_lossy(&kv.value).into_owned());
        }
    }
    Ok(known)
}

impl Claims {
    fn known(&self) -> std::sync::MutexGuard<'_, Option<Known>> {
        self.0.lock().expect("claims")
    }
}

/// The block `node` owns, claiming a free one if it has none. `None`
/// when the cluster CIDR is exhausted.
pub async fn claim(
    store: &Datastore,
    claims: &Claims,
    ipam: &Ipam,
    node: &str,
) -> Result<Option<String>, DatastoreError> {
    let mut reloaded = false;
    // Each round either answers or learns one block's owner.
    for _ in 0..ipam.blocks() as usize + 3 {
        if claims.known().is_none() {
            let known = load(store).await?;
            claims.known().get_or_insert(known);
            reloaded = true;
        }
        let picked = claims.known().as_mut().and_then(|k| k.pick(ipam, node));
        match picked {
            Some(Ok(n)) => return Ok(Some(ipam.block(n))),
            Some(Err(n)) => match store
                .create(&format!("{PREFIX}{n}"), node.as_bytes().to_vec())
                .await
            {
                Ok(_) => return Ok(Some(ipam.block(n))),
                // Another server holds it: learn its owner (it may be this
                // node, claimed through that server) and look again.
                Err(DatastoreError::AlreadyExists(_)) => {
                    let owner = store
                        .get(&format!("{PREFIX}{n}"))
                        .await?
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    if let Some(k) = claims.known().as_mut() {
                        match owner {
                            Some(o) => {
                                // Another server is handing out blocks from
                                // here at the same time: go on half the
                                // range away instead of meeting its claims
                                // one collision at a time.
                                if o != node {
                                    k.next = (n + ipam.blocks() / 2) % ipam.blocks();
                                }
                                k.set(n, o)
                            }
                            None => k.unset(n),
                        }
                    }
                }
                Err(e) => {
                    if let Some(k) = claims.known().as_mut() {
                        k.unset(n);
                    }
                    return Err(e);
                }
            },
            None => {
                // Full as far as this server knows: read the claims again
                // (once, and not more often than RELOAD_WHEN_FULL).
                let mut known = claims.known();
                let stale = known
                    .as_ref()
                    .and_then(|k| k.loaded)
                    .is_none_or(|t| t.elapsed() >= RELOAD_WHEN_FULL);
                if reloaded || !stale {
                    return Ok(None);
                }
                *known = None;
            }
        }
    }
    Ok(None)
}

/// Release the blocks `node` owns.
pub async fn release(store: &Datastore, claims: &Claims, node: &str) -> Result<(), DatastoreError> {
    let (_, all) = store.list(PREFIX).await?;
    for kv in all.iter().filter(|kv| kv.value == node.as_bytes()) {
        match store.delete(&kv.key, Some(kv.mod_revision)).await {
            Ok(_) | Err(DatastoreError::NotFound(_)) | Err(DatastoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(k) = claims.known().as_mut() {
        if let Some(n) = k.blocks.get(node).copied() {
            k.unset(n);
        }
    }
    Ok(())
}

/// The pod CIDR for a Node about to be created, so that it is written
/// once with it. None when the range is exhausted or the claim failed
/// (logged): [`assign`] then tries again, and reports exhaustion, once the
/// Node exists.
pub async fn for_new_node(
    store: &Datastore,
    claims: &Claims,
    ipam: &Ipam,
    node: &str,
) -> Option<String> {
    match claim(store, claims, ipam, node).await {
        Ok(Some(cidr)) => {
            tracing::info!(node, pod_cidr = %cidr, "assigned the node's pod CIDR");
            Some(cidr)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(node, error = %e, "could not claim a pod CIDR for the new node; retrying with its next status");
            None
        }
    }
}

/// Give the Node `current` (as just read or written) its pod CIDR if it
/// has none yet, through the registry.
pub async fn assign(
    registry: &Registry,
    events: &Recorder,
    claims: &Claims,
    ipam: &Ipam,
    current: &Value,
) -> Result<(), KubeError> {
    let Some(node) = current.pointer("/metadata/name").and_then(Value::as_str) else {
        return Ok(());
    };
    if current
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some()
    {
        return Ok(());
    }
    let Some(cidr) = claim(&registry.objects.store, claims, ipam, node).await? else {
        tracing::warn!(node, cluster_cidr = %ipam.cidr(),
            "no pod CIDR left for this node: the cluster CIDR is exhausted (forget unused nodes or widen --cluster-cidr)");
        // Upstream's range allocator reports it on the Node (`kubectl
        // describe node`); every further attempt raises its count.
        let mut node_ref = reference(current);
        node_ref.api_version = Some("v1".into());
        node_ref.kind = Some("Node".into());
        events.record(
            "cidrAllocator",
            node_ref,
            EventType::Normal,
            "CIDRNotAvailable",
            format!("Node {node} status is now: CIDRNotAvailable"),
        );
        return Ok(());
    };
    let nodes = kinds::NODES.resource_type();
    registry
        .modify_in(&nodes, None, node, None, |n| {
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

    fn store() -> (tempfile::TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let backend =
            crate::datastore::sqlite::SqliteBackend::open(&dir.path().join("s.db")).unwrap();
        (dir, Datastore::new(std::sync::Arc::new(backend)))
    }

    #[tokio::test]
    async fn a_server_that_meets_another_servers_claims_goes_on_elsewhere() {
        let (_dir, store) = store();
        // Sixteen /28 blocks. Each server reads the claims at its first
        // claim and then knows only its own and those it collides with.
        let i = Ipam::parse("10.0.0.0/24", 28).unwrap();
        let (one, two) = (Claims::default(), Claims::default());
        assert_eq!(
            claim(&store, &one, &i, "a0").await.unwrap().as_deref(),
            Some("10.0.0.0/28")
        );
        assert_eq!(
            claim(&store, &two, &i, "b0").await.unwrap().as_deref(),
            Some("10.0.0.16/28")
        );
        // One's next pick, block 1, is two's: after that collision it goes
        // on half the range away, where two is not handing out blocks,
        // rather than right behind two's claims.
        assert_eq!(
            claim(&store, &one, &i, "a1").await.unwrap().as_deref(),
            Some("10.0.0.144/28")
        );
        assert_eq!(
            claim(&store, &one, &i, "a2").await.unwrap().as_deref(),
            Some("10.0.0.160/28")
        );
        assert_eq!(
            claim(&store, &two, &i, "b1").await.unwrap().as_deref(),
            Some("10.0.0.32/28")
        );
    }

    #[tokio::test]
    async fn claims_are_unique_and_released() {
        let (_dir, store) = store();
        // Two /30 blocks in a /29, two servers each with what it knows.
        let i = Ipam::parse("10.0.0.0/29", 30).unwrap();
        let (one, two) = (Claims::default(), Claims::default());
        assert_eq!(
            claim(&store, &two, &i, "b").await.unwrap().as_deref(),
            Some("10.0.0.0/30")
        );
        assert_eq!(
            claim(&store, &one, &i, "a").await.unwrap().as_deref(),
            Some("10.0.0.4/30")
        );
        assert_eq!(
            claim(&store, &one, &i, "a").await.unwrap().as_deref(),
            Some("10.0.0.4/30")
        );
        // The second server never saw a's claim: its create fails, and it
        // learns the block is a's.
        assert_eq!(
            claim(&store, &two, &i, "a").await.unwrap().as_deref(),
            Some("10.0.0.4/30")
        );
        assert_eq!(
            claim(&store, &one, &i, "c").await.unwrap(),
            None,
            "exhausted"
        );
        assert_eq!(claim(&store, &two, &i, "c").await.unwrap(), None);
        // A node that gets none is told so on an Event, counted per try.
        let objects = crate::datastore::objects::Objects::new(store.clone());
        let registry = std::sync::Arc::new(Registry::new(objects.clone()).await);
        let events = crate::controllers::client::server_recorder(registry.clone());
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        let default = crate::datastore::objects::Ref::cluster("namespaces", "default");
        registry.create_at(&default, ns).await.unwrap();
        let node = crate::datastore::objects::Ref::cluster("nodes", "c");
        let stored = registry
            .create_at(
                &node,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "c"}}),
            )
            .await
            .unwrap();
        for _ in 0..2 {
            assign(&registry, &events, &one, &i, &stored).await.unwrap();
        }
        let mut ev = Value::Null;
        for _ in 0..100 {
            let (_, list) = registry
                .list(&kinds::EVENTS.resource_type(), Some("default"))
                .await
                .unwrap();
            if let Some(e) = list.into_iter().find(|e| e["count"] == 2) {
                ev = e;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(ev["reason"], "CIDRNotAvailable", "{ev}");
        assert_eq!(ev["message"], "Node c status is now: CIDRNotAvailable");
        assert_eq!(ev["involvedObject"]["name"], "c");
        assert_eq!(ev["source"]["component"], "cidrAllocator");
        let n = objects.get(&node).await.unwrap().unwrap();
        assert!(n.pointer("/spec/podCIDR").is_none());
        release(&store, &one, "a").await.unwrap();
        assert_eq!(
            claim(&store, &one, &i, "c").await.unwrap().as_deref(),
            Some("10.0.0.4/30")
        );
    }
}
