//! The scheduler: binds pods without a node (schedulerName
//! `default-scheduler`) to one, as kube-scheduler's default profile does
//! in its essentials.
//!
//! Filters: the node is Ready and schedulable, its NoSchedule/NoExecute
//! taints are tolerated, nodeSelector and required node affinity match,
//! the pods' requests fit the allocatable cpu, memory and pod count, the
//! host ports are free, required pod (anti-)affinity holds. Scores: least
//! requested resources (upstream's non-zero requests), preferred node affinity weights, and fewest pods
//! of the same owner (replicas spread). The queue is ordered by priority,
//! then age. An unschedulable pod gets PodScheduled=False with upstream's
//! message (`0/3 nodes are available: ...`) and a FailedScheduling Event,
//! and is tried again when nodes or pods change.

use super::client::{controller_uid, s, Client};
use super::predicates::deleting;
use super::runtime::{Controller, Requeue, Result};
use crate::datastore::EventKind;
use crate::kube::placement::{
    finished, host_ports, node_affinity_holds, nonzero_requests, ports_clash, requests, term_holds,
    tolerates, Allocatable,
};
use crate::registry::cache::{Cache, Change};
use crate::registry::core::{bind_pod_from, Bound};
use crate::registry::kinds;
use crate::registry::validation::selector_matches;
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodAffinityTerm, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const NAME: &str = "default-scheduler";
/// Bindings written at once. The datastore commits the writes waiting at
/// once in one transaction, so a binding's time is mostly its wait for a
/// commit: with 64 in flight a pass of 400 bound ~2,100 pods/s, with the
/// SQLite writer's own batch size (512) in flight it is one commit.
const BIND_PARALLELISM: usize = 512;
/// Pending pods are looked at again this often even without changes.
const RETRY: Duration = Duration::from_secs(5);
/// Changes that come close together are gathered this long (at least) so
/// a burst of creations is one pass.
const GATHER: Duration = Duration::from_millis(20);

/// How long to gather changes before a pass, `since_last` after the last
/// pass ended, which spent `last_pass` choosing. A change after a quiet
/// spell (a pod created on its own) goes at once, as upstream's queue pops
/// it at once; a change hard on the heels of a pass waits at least as long
/// as that pass spent choosing, so a burst of pods leaves the other half
/// of the time to whoever creates them.
fn gather_for(since_last: Duration, last_pass: Duration) -> Duration {
    if since_last >= GATHER.max(last_pass) {
        Duration::ZERO
    } else {
        last_pass.max(GATHER)
    }
}

/// What is already placed on a node, borrowed from the pass's pod index
/// (a pass over thousands of pods copies none of them).
#[derive(Debug, Default, Clone)]
struct Usage<'a> {
    cpu_milli: i128,
    memory: i128,
    /// What scoring counts of the same pods (see `nonzero_requests`).
    scored_cpu_milli: i128,
    scored_memory: i128,
    pods: i64,
    ports: HashSet<(String, i32, String)>,
    /// Pods there: namespace and labels, for pod (anti-)affinity.
    placed: Vec<(&'a str, &'a BTreeMap<String, String>)>,
    /// Pods there per controller uid, for spreading siblings.
    by_owner: HashMap<&'a str, i128>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> Usage<'a> {
    /// Count pod `p` (stored as `v`) as placed here.
    fn add(&mut self, p: &'a Pod, v: &'a Value) {
        let (cpu, mem) = requests(p);
        self.cpu_milli += cpu;
        self.memory += mem;
        let (cpu, mem) = nonzero_requests(p);
        self.scored_cpu_milli += cpu;
        self.scored_memory += mem;
        self.pods += 1;
        self.ports.extend(host_ports(p));
        self.placed.push((
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        ));
        if let Some(owner) = controller_uid(v) {
            *self.by_owner.entry(owner).or_default() += 1;
        }
    }
}

/// A node as the filters see it.
struct Candidate {
    name: String,
    spec: NodeSpec,
    ready: bool,
    labels: BTreeMap<String, String>,
    alloc: Allocatable,
}

/// Whether a pod of `spec` may go on `node` by nodeSelector, required node
/// affinity and NoSchedule/NoExecute taints (resources aside): what the
/// DaemonSet controller asks of every node.
pub fn node_accepts(spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node) -> bool {
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let node_spec = node.spec.clone().unwrap_or_default();
    let unschedulable = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    node_affinity_holds(spec, &name, &labels)
        && (node_spec.unschedulable != Some(true) || tolerates(&tolerations, &unschedulable))
        && node_spec
            .taints
            .iter()
            .flatten()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|t| tolerates(&tolerations, t))
}

/// Does some pod in `c`'s topology domain (by `term.topologyKey`) match `term`?
fn term_matched_near(
    term: &PodAffinityTerm,
    own_ns: &str,
    c: &Candidate,
    candidates: &[Candidate],
    usage: &HashMap<String, Usage<'_>>,
) -> bool {
    let Some(domain) = c.labels.get(&term.topology_key) else {
        return false;
    };
    let namespaces: Vec<String> = match &term.namespaces {
        Some(n) if !n.is_empty() => n.clone(),
        _ => vec![own_ns.to_string()],
    };
    let sel = term.label_selector.clone().unwrap_or_default();
    candidates
        .iter()
        .filter(|o| o.labels.get(&term.topology_key) == Some(domain))
        .filter_map(|o| usage.get(&o.name))
        .flat_map(|u| u.placed.iter())
        .any(|(ns, labels)| {
            namespaces.iter().any(|n| n == ns) && selector_matches(&sel, Some(labels))
        })
}

/// Why `p` cannot go on `c`, in upstream's words; `None` when it can.
fn unfit(
    p: &Pod,
    c: &Candidate,
    candidates: &[Candidate],
    usage: &HashMap<String, Usage<'_>>,
) -> Option<Vec<String>> {
    let spec = p.spec.as_ref().expect("pending pods have a spec");
    let node_spec = &c.spec;
    if !c.ready {
        return Some(vec!["node(s) were not ready".into()]);
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    if node_spec.unschedulable == Some(true)
        && !tolerates(
            &tolerations,
            &Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
        )
    {
        return Some(vec!["node(s) were unschedulable".into()]);
    }
    if let Some(t) = node_spec
        .taints
        .iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerates(&tolerations, t))
    {
        return Some(vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )]);
    }
    if !node_affinity_holds(spec, &c.name, &c.labels) {
        return Some(vec![
            "node(s) didn't match Pod's node affinity/selector".into()
        ]);
    }
    let none = Usage::default();
    let used = usage.get(&c.name).unwrap_or(&none);
    let (cpu, mem) = requests(p);
    let mut short = Vec::new();
    if used.pods + 1 > c.alloc.pods {
        short.push("Too many pods".to_string());
    }
    if cpu > 0 && used.cpu_milli + cpu > c.alloc.cpu_milli {
        short.push("Insufficient cpu".to_string());
    }
    if mem > 0 && used.memory + mem > c.alloc.memory {
        short.push("Insufficient memory".to_string());
    }
    if !short.is_empty() {
        return Some(short);
    }
    if host_ports(p)
        .iter()
        .any(|want| used.ports.iter().any(|have| ports_clash(want, have)))
    {
        return Some(vec![
            "node(s) didn't have free ports for the requested pod ports".into(),
        ]);
    }
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let affinity = spec.affinity.clone().unwrap_or_default();
    if let Some(anti) = affinity.pod_anti_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        if anti
            .iter()
            .any(|t| term_matched_near(t, &ns, c, candidates, usage))
        {
            return Some(vec!["node(s) didn't match pod anti-affinity rules".into()]);
        }
    }
    if let Some(aff) = affinity.pod_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        let own = p.metadata.labels.clone().unwrap_or_default();
        let ok = aff.iter().all(|t| {
            term_matched_near(t, &ns, c, candidates, usage)
                // Upstream: the first pod of a group that selects itself
                // may go anywhere when no match exists yet.
                || (selector_matches(&t.label_selector.clone().unwrap_or_default(), Some(&own))
                    && !candidates
                        .iter()
                        .any(|o| term_matched_near(t, &ns, o, candidates, usage)))
        });
        if !ok {
            return Some(vec!["node(s) didn't match pod affinity rules".into()]);
        }
    }
    None
}

/// Higher is better: least requested (0-100 each for cpu and memory),
/// preferred node affinity, and spreading the pod's siblings.
fn score(p: &Pod, c: &Candidate, usage: &HashMap<String, Usage<'_>>) -> i128 {
    let none = Usage::default();
    let used = usage.get(&c.name).unwrap_or(&none);
    let (cpu, mem) = nonzero_requests(p);
    let free = |used: i128, alloc: i128| {
        if alloc <= 0 {
            0
        } else {
            ((alloc - used).max(0) * 100) / alloc
        }
    };
    let least = (free(used.scored_cpu_milli + cpu, c.alloc.cpu_milli)
        + free(used.scored_memory + mem, c.alloc.memory))
        / 2;
    let preferred: i128 = p
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| term_holds(&t.preference, &c.name, &c.labels))
        .map(|t| t.weight as i128)
        .sum();
    let owner = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let siblings = owner.map_or(0, |o| {
        used.by_owner.get(o.uid.as_str()).copied().unwrap_or(0)
    });
    least + preferred - siblings * 100
}

/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable.`
pub fn unschedulable_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
        parts.join(", ")
    )
}

/// The parts of a Node the filters read, taken from the cached object
/// without typing the whole Node (its images and nodeInfo are most of it).
fn candidate(v: &Value) -> Option<Candidate> {
    let typed = |ptr: &str| v.pointer(ptr).filter(|x| !x.is_null());
    let alloc: BTreeMap<String, Quantity> = typed("/status/allocatable")
        .or_else(|| typed("/status/capacity"))
        .and_then(|a| BTreeMap::deserialize(a).ok())
        .unwrap_or_default();
    Some(Candidate {
        name: v.pointer("/metadata/name")?.as_str()?.to_string(),
        spec: typed("/spec")
            .and_then(|x| NodeSpec::deserialize(x).ok())
            .unwrap_or_default(),
        ready: v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|x| x["type"] == "Ready"))
            .is_some_and(|x| x["status"] == "True"),
        labels: typed("/metadata/labels")
            .and_then(|x| BTreeMap::deserialize(x).ok())
            .unwrap_or_default(),
        alloc: Allocatable::from_list(&alloc),
    })
}

/// Every node, by name (the cache's key order).
fn candidates(cache: &Cache) -> Vec<Candidate> {
    cache
        .list(NODES.as_str())
        .into_iter()
        .filter_map(|(_, v)| candidate(&v))
        .collect()
}

/// Follow one node change: only that node is read again, so ten thousand
/// heartbeating nodes do not each cost a pass over all of them.
fn update_candidates(nodes: &mut Vec<Candidate>, ch: &Change) {
    let Some(name) = ch.key.strip_prefix(NODES.as_str()) else {
        return;
    };
    let at = nodes.binary_search_by(|c| c.name.as_str().cmp(name));
    let new = match ch.kind {
        EventKind::Delete => None,
        _ => candidate(&ch.object),
    };
    match (at, new) {
        (Ok(i), Some(c)) => nodes[i] = c,
        (Ok(i), None) => {
            nodes.remove(i);
        }
        (Err(i), Some(c)) => nodes.insert(i, c),
        (Err(_), None) => {}
    }
}

/// Why the pod's claims keep it from every node: a claim that does not
/// exist, or is not Bound (there is no volume binding or provisioning
/// here, so every claim is "immediate").
fn unready_claims(cache: &Cache, p: &Pod) -> Option<String> {
    let ns = p.metadata.namespace.as_deref().unwrap_or("");
    let vols = p.spec.as_ref()?.volumes.as_ref()?;
    for claim in vols
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
    {
        let key = kinds::PERSISTENT_VOLUME_CLAIMS.key(Some(ns), &claim.claim_name);
        match cache.get(&key) {
            None => {
                return Some(format!(
                    "persistentvolumeclaim \"{}\" not found",
                    claim.claim_name
                ))
            }
            Some(c) if s(&c, "/status/phase") != "Bound" => {
                return Some("pod has unbound immediate PersistentVolumeClaims".into())
            }
            Some(_) => {}
        }
    }
    None
}

/// Whether the pod waits for this scheduler: not bound, not being
/// deleted, and `default-scheduler`'s (its name, or none).
fn waits_for_us(v: &Value, p: &Pod) -> bool {
    let bound = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    !bound && !deleting(v) && (scheduler_of(p) == NAME || scheduler_of(p).is_empty())
}

fn scheduler_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(NAME)
}

/// One pass over the pending pods. `assumed` holds the bindings made but
/// not yet seen in the cache (pod uid → node), as upstream's assume cache
/// does, so the next pass counts them where they went. Returns the time
/// spent choosing (the bindings' writes not counted).
async fn schedule(
    c: &Client,
    cache: &Cache,
    nodes: &[Candidate],
    index: &PodIndex,
    assumed: &mut HashMap<String, String>,
) -> Duration {
    let t0 = std::time::Instant::now();
    let mut usage: HashMap<String, Usage> = HashMap::new();
    let mut pending = Vec::new();
    let mut seen = HashSet::new();
    for (v, p) in index.values() {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        seen.insert(uid.clone());
        let mut node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            if let Some(n) = assumed.get(&uid) {
                node = n.clone();
            }
        } else {
            assumed.remove(&uid);
        }
        if node.is_empty() {
            if waits_for_us(v, p) {
                pending.push((v, p));
            }
            continue;
        }
        if finished(p) {
            continue;
        }
        usage.entry(node).or_default().add(p, v);
    }
    assumed.retain(|uid, _| seen.contains(uid));
    // Priority first, then the oldest.
    pending.sort_by(|a, b| {
        let prio = |p: &Pod| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        prio(b.1).cmp(&prio(a.1)).then_with(|| {
            s(a.0, "/metadata/creationTimestamp").cmp(s(b.0, "/metadata/creationTimestamp"))
        })
    });
    let mut binds = vec![];
    for (v, p) in pending {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(i128, &Candidate)> = None;
        let claims = unready_claims(cache, p);
        for n in nodes {
            let why = match &claims {
                Some(r) => Some(vec![r.clone()]),
                None => unfit(p, n, nodes, &usage),
            };
            match why {
                Some(why) => {
                    for r in why {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
                None => {
                    let sc = score(p, n, &usage);
                    // Ties go to the name that sorts first, so runs repeat.
                    if best.is_none_or(|(b, bn)| sc > b || (sc == b && n.name < bn.name)) {
                        best = Some((sc, n));
                    }
                }
            }
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        match best {
            Some((_, n)) => {
                // Assumed at once; the bindings are written together below.
                if let Some(uid) = p.metadata.uid.clone() {
                    assumed.insert(uid, n.name.clone());
                }
                usage.entry(n.name.clone()).or_default().add(p, v);
                binds.push((v.clone(), ns, name, n.name.clone(), p.metadata.uid.clone()));
            }
            None => {
                let message = unschedulable_message(nodes.len(), &reasons);
                let rt = kinds::PODS.resource_type();
                let mut changed = false;
                let now = crate::datastore::objects::now_rfc3339();
                let r = c
                    .update(&rt, &ns, &name, true, |pod| {
                        let conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
                        let same = conds.iter().any(|x| {
                            x["type"] == "PodScheduled" && x["status"] == "False" && x["message"] == message.as_str()
                        });
                        if same {
                            return false;
                        }
                        let mut conds: Vec<Value> =
                            conds.into_iter().filter(|x| x["type"] != "PodScheduled").collect();
                        conds.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": message, "lastProbeTime": null, "lastTransitionTime": now}));
                        pod["status"]["conditions"] = json!(conds);
                        if pod["status"]["phase"].is_null() {
                            pod["status"]["phase"] = json!("Pending");
                        }
                        changed = true;
                        true
                    })
                    .await;
                if let Err(e) = r {
                    tracing::debug!(pod = %name, error = %e, "could not write PodScheduled");
                }
                if changed {
                    tracing::info!(namespace = %ns, pod = %name, %message, "pod is unschedulable");
                    c.event(v, "Warning", "FailedScheduling", &message, NAME)
                        .await;
                }
            }
        }
    }
    let choosing = t0.elapsed();
    let n_binds = binds.len();
    // Bindings go out together, as upstream binds asynchronously; one
    // that fails is forgotten, so the next pass places the pod again.
    use futures_util::StreamExt;
    // Each binding is a task of its own, so both cores encode them.
    let mut unconfirmed: HashSet<String> = binds.iter().filter_map(|b| b.4.clone()).collect();
    let results: Vec<_> = futures_util::stream::iter(binds)
        .map(|(v, ns, name, node, uid)| {
            let objects = c.reg.objects.clone();
            tokio::spawn(async move {
                let r = crate::datastore::objects::Ref::namespaced("pods", &ns, &name);
                let res = bind_pod_from(&objects, &r, (*v).clone(), &node).await;
                (v, ns, name, node, uid, res)
            })
        })
        .buffer_unordered(BIND_PARALLELISM)
        .collect()
        .await;
    for joined in results {
        let Ok((v, ns, name, node, uid, res)) = joined else {
            continue;
        };
        match res {
            Ok(Bound::Yes) => {
                tracing::debug!(namespace = %ns, pod = %name, node = %node, "pod scheduled");
                let msg = format!("Successfully assigned {ns}/{name} to {node}");
                c.event(&v, "Normal", "Scheduled", &msg, NAME).await;
                if let Some(uid) = uid {
                    unconfirmed.remove(&uid);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "could not bind a pod"),
        }
    }
    tracing::debug!(
        binds = n_binds,
        unbound = unconfirmed.len(),
        choosing_ms = choosing.as_millis() as u64,
        total_ms = t0.elapsed().as_millis() as u64,
        "scheduling pass"
    );
    // Not bound (refused, gone, failed, or its task died): placed again
    // by the next pass.
    for uid in unconfirmed {
        assumed.remove(&uid);
    }
    choosing
}

/// Every pod, decoded once per change (a pass reads these instead of
/// decoding every pod again).
type PodIndex = BTreeMap<String, (Arc<Value>, Pod)>;

static PODS: LazyLock<String> = LazyLock::new(|| kinds::PODS.prefix(None));
static NODES: LazyLock<String> = LazyLock::new(|| kinds::NODES.prefix(None));

fn index_all(cache: &Cache) -> PodIndex {
    cache
        .list(&PODS)
        .into_iter()
        .filter_map(|(k, v)| {
            let p = <Pod as serde::Deserialize>::deserialize(&*v).ok()?;
            Some((k, (v, p)))
        })
        .collect()
}

/// The keys of the pods that wait for this scheduler.
type Pending = HashSet<String>;

fn pending_in(index: &PodIndex) -> Pending {
    index
        .iter()
        .filter(|(_, (v, p))| waits_for_us(v, p))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Apply one change; whether a pass is due: some pod waits for this
/// scheduler. With none waiting, the status writes of running pods and
/// the nodes' heartbeats wake nobody (and a pod created next is not held
/// back by a pass they started: see [`gather_for`]).
fn apply(
    index: &mut PodIndex,
    nodes: &mut Vec<Candidate>,
    pending: &mut Pending,
    ch: &Change,
) -> bool {
    if !ch.key.starts_with(PODS.as_str()) {
        update_candidates(nodes, ch);
        return ch.key.starts_with(NODES.as_str()) && !pending.is_empty();
    }
    let pod = match ch.kind {
        EventKind::Delete => None,
        _ => <Pod as serde::Deserialize>::deserialize(&*ch.object).ok(),
    };
    match pod {
        Some(p) => {
            if waits_for_us(&ch.object, &p) {
                pending.insert(ch.key.clone());
            } else {
                pending.remove(&ch.key);
            }
            index.insert(ch.key.clone(), (ch.object.clone(), p));
        }
        None => {
            index.remove(&ch.key);
            pending.remove(&ch.key);
        }
    }
    !pending.is_empty()
}

/// What the scheduler keeps between passes.
struct State {
    index: PodIndex,
    pending: Pending,
    nodes: Vec<Candidate>,
    assumed: HashMap<String, String>,
    last_pass: Duration,
    last_end: Option<std::time::Instant>,
    /// When the last pass ran whether or not anything changed.
    last_tick: std::time::Instant,
}

/// The scheduler as a controller of one key. Pod and Node changes are
/// handed to it as they come and decide whether a pass is due ([`apply`]):
/// only while some pod waits for this scheduler, at once after a quiet
/// spell, gathered when changes come close together ([`gather_for`]).
/// Every [`RETRY`] a pass runs for whatever waits; at start, and after
/// the change feed lagged, the index is built anew.
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
    let rebuild = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = Arc::new(tokio::sync::Mutex::new(State {
        index: PodIndex::new(),
        pending: Pending::new(),
        nodes: vec![],
        assumed: HashMap::new(),
        last_pass: Duration::ZERO,
        last_end: None,
        last_tick: std::time::Instant::now(),
    }));
    let (noted, flagged) = (changes.clone(), rebuild.clone());
    Controller::new(NAME, move |_key: String| {
        let (c, cache, changes, rebuild, state) = (
            c.clone(),
            cache.clone(),
            changes.clone(),
            rebuild.clone(),
            state.clone(),
        );
        async move { pass(&c, &cache, &changes, &rebuild, &state).await }
    })
    .watches(Box::new(move |ch, _| {
        if !ch.key.starts_with(PODS.as_str()) && !ch.key.starts_with(NODES.as_str()) {
            return vec![];
        }
        noted.lock().expect("scheduler changes").push(ch.clone());
        vec!["pass".to_string()]
    }))
    .lists(
        Box::new(move |_| {
            flagged.store(true, std::sync::atomic::Ordering::Release);
            vec!["pass".to_string()]
        }),
        None,
    )
}

/// Take in the changes noted so far; whether any makes a pass due.
fn take_in(st: &mut State, changes: &Mutex<Vec<Change>>) -> bool {
    let batch = std::mem::take(&mut *changes.lock().expect("scheduler changes"));
    let mut due = false;
    for ch in &batch {
        due |= apply(&mut st.index, &mut st.nodes, &mut st.pending, ch);
    }
    due
}

async fn pass(
    c: &Client,
    cache: &Cache,
    changes: &Mutex<Vec<Change>>,
    rebuild: &std::sync::atomic::AtomicBool,
    state: &tokio::sync::Mutex<State>,
) -> Result {
    let mut st = state.lock().await;
    let st = &mut *st;
    let mut due = false;
    if rebuild.swap(false, std::sync::atomic::Ordering::AcqRel) {
        changes.lock().expect("scheduler changes").clear();
        st.index = index_all(cache);
        st.pending = pending_in(&st.index);
        st.nodes = candidates(cache);
        due = true;
    }
    due |= take_in(st, changes);
    let tick = st.last_tick.elapsed() >= RETRY;
    if !due && !tick {
        return Ok(Requeue::After(RETRY - st.last_tick.elapsed()));
    }
    if due && !tick {
        let since = st.last_end.map_or(Duration::MAX, |t| t.elapsed());
        let gather = gather_for(since, st.last_pass);
        if !gather.is_zero() {
            tokio::time::sleep(gather).await;
        }
        // What arrived meanwhile joins this pass.
        take_in(st, changes);
    }
    st.last_tick = std::time::Instant::now();
    st.last_pass = schedule(c, cache, &st.nodes, &st.index, &mut st.assumed).await;
    st.last_end = Some(std::time::Instant::now());
    Ok(Requeue::After(RETRY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_changes_update_only_their_candidate_in_name_order() {
        let ch = |kind: EventKind, name: &str, ready: &str| Change {
            kind,
            key: kinds::NODES.key(None, name),
            object: Arc::new(json!({"metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}})),
        };
        let mut nodes = vec![];
        for n in ["b", "a", "c"] {
            update_candidates(&mut nodes, &ch(EventKind::Create, n, "True"));
        }
        let names = |v: &[Candidate]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&nodes), ["a", "b", "c"]);
        update_candidates(&mut nodes, &ch(EventKind::Update, "b", "False"));
        assert!(!nodes[1].ready && nodes[0].ready && nodes[2].ready);
        update_candidates(&mut nodes, &ch(EventKind::Delete, "a", "True"));
        assert_eq!(names(&nodes), ["b", "c"]);
        update_candidates(&mut nodes, &ch(EventKind::Delete, "zz", "True"));
        assert_eq!(names(&nodes), ["b", "c"]);
    }

    #[test]
    fn only_a_pod_waiting_for_the_scheduler_makes_a_pass_due() {
        let pod = |kind: EventKind, name: &str, spec: Value| Change {
            kind,
            key: kinds::PODS.key(Some("d"), name),
            object: Arc::new(
                json!({"metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": spec}),
            ),
        };
        let node = Change {
            kind: EventKind::Update,
            key: kinds::NODES.key(None, "n1"),
            object: Arc::new(json!({"metadata": {"name": "n1"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        };
        let (mut index, mut nodes, mut pending) = (PodIndex::new(), vec![], Pending::new());
        let mut apply = |ch: &Change| apply(&mut index, &mut nodes, &mut pending, ch);
        let unbound = json!({"containers": [{"name": "c", "image": "i"}]});
        let bound = json!({"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]});
        let other = json!({"schedulerName": "other", "containers": [{"name": "c", "image": "i"}]});
        // A running pod's status write, another scheduler's pod, a node's
        // heartbeat: nothing waits.
        assert!(!apply(&pod(EventKind::Update, "run", bound.clone())));
        assert!(!apply(&pod(EventKind::Create, "theirs", other)));
        assert!(!apply(&node));
        // A new pod waits, and while it does every change counts.
        assert!(apply(&pod(EventKind::Create, "new", unbound.clone())));
        assert!(apply(&node));
        assert!(apply(&pod(EventKind::Update, "run", bound.clone())));
        // Bound (or deleted): nothing waits any more.
        assert!(!apply(&pod(EventKind::Update, "new", bound)));
        assert!(apply(&pod(EventKind::Create, "gone", unbound.clone())));
        assert!(!apply(&pod(EventKind::Delete, "gone", unbound)));
    }

    #[test]
    fn a_change_after_a_quiet_spell_is_not_held_back() {
        let ms = Duration::from_millis;
        // Alone: at once, as upstream; the first change ever too.
        assert_eq!(gather_for(ms(500), ms(1)), Duration::ZERO);
        assert_eq!(gather_for(Duration::MAX, Duration::ZERO), Duration::ZERO);
        // Right after a pass: gathered, at least GATHER, longer after a
        // pass that spent longer choosing.
        assert_eq!(gather_for(ms(2), ms(1)), GATHER);
        assert_eq!(gather_for(ms(2), ms(80)), ms(80));
        // A pass that chose for 80 ms is not quiet 30 ms later.
        assert_eq!(gather_for(ms(30), ms(80)), ms(80));
        assert_eq!(gather_for(ms(80), ms(80)), Duration::ZERO);
    }

    #[test]
    fn the_message_counts_reasons_as_upstream() {
        let mut r = BTreeMap::new();
        r.insert("node(s) were unschedulable".to_string(), 2);
        r.insert("Insufficient cpu".to_string(), 1);
        let m = unschedulable_message(3, &r);
        assert!(
            m.starts_with(
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable."
            ),
            "{m}"
        );
        assert_eq!(
            unschedulable_message(0, &r),
            "no nodes available to schedule pods"
        );
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, cpu: &str, labels: Value) -> Candidate {
        candidate(&json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "2"},
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn replicas_spread_over_nodes_by_owner() {
        let nodes = [node("a", "4", json!({})), node("b", "4", json!({}))];
        let owned = |name: &str, owner: &str| {
            let v = json!({"metadata": {"name": name, "namespace": "d",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                        "uid": owner, "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "i"}]}});
            (pod(v.clone()), v)
        };
        let (s1, v1) = owned("s1", "rs-1");
        let (other, vo) = owned("o", "rs-2");
        let (other2, vo2) = owned("o2", "rs-2");
        let mut usage = HashMap::new();
        // a holds a sibling; b holds two pods of another owner.
        usage
            .entry("a".to_string())
            .or_insert_with(Usage::default)
            .add(&s1, &v1);
        let b = usage.entry("b".to_string()).or_insert_with(Usage::default);
        b.add(&other, &vo);
        b.add(&other2, &vo2);
        let (next, _) = owned("s2", "rs-1");
        assert!(
            score(&next, &nodes[1], &usage) > score(&next, &nodes[0], &usage),
            "the sibling-free node wins despite holding more pods"
        );
        let (third, _) = owned("o3", "rs-2");
        assert!(score(&third, &nodes[0], &usage) > score(&third, &nodes[1], &usage));
    }

    #[test]
    fn pods_that_request_nothing_still_spread() {
        let nodes = [node("a", "4", json!({})), node("b", "4", json!({}))];
        let bare = |name: &str| {
            let v = json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"containers": [{"name": "c", "image": "i"}]}});
            (pod(v.clone()), v)
        };
        let (first, v1) = bare("p1");
        let mut usage = HashMap::new();
        usage
            .entry("a".to_string())
            .or_insert_with(Usage::default)
            .add(&first, &v1);
        let (next, _) = bare("p2");
        assert!(
            score(&next, &nodes[1], &usage) > score(&next, &nodes[0], &usage),
            "a node holding a pod that asks for nothing still scores lower"
        );
        // Fitting still counts real requests only: nothing.
        assert_eq!(usage["a"].cpu_milli, 0);
        assert_eq!(usage["a"].scored_cpu_milli, 100);
    }

    #[test]
    fn filters_say_why() {
        let nodes = vec![
            node("a", "1", json!({"disk": "ssd"})),
            node("b", "4", json!({"disk": "hdd"})),
        ];
        let usage = HashMap::new();
        let big = pod(
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [
            {"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}}),
        );
        assert_eq!(
            unfit(&big, &nodes[0], &nodes, &usage),
            Some(vec!["Insufficient cpu".to_string()])
        );
        assert_eq!(unfit(&big, &nodes[1], &nodes, &usage), None);
        let ssd = pod(
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "i"}]}}),
        );
        assert_eq!(unfit(&ssd, &nodes[0], &nodes, &usage), None);
        assert!(
            unfit(&ssd, &nodes[1], &nodes, &usage).unwrap()[0].contains("node affinity/selector")
        );
        let mut full = HashMap::new();
        full.insert(
            "a".to_string(),
            Usage {
                pods: 2,
                ..Default::default()
            },
        );
        assert_eq!(
            unfit(&ssd, &nodes[0], &nodes, &full),
            Some(vec!["Too many pods".to_string()])
        );
        // Anti-affinity on the hostname keeps two replicas apart.
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let mut placed = HashMap::new();
        placed.insert(
            "a".to_string(),
            Usage {
                pods: 1,
                placed: vec![("d", &web)],
                ..Default::default()
            },
        );
        let labelled = |n: &str| node(n, "4", json!({"kubernetes.io/hostname": n}));
        let hosts = vec![labelled("a"), labelled("b")];
        let apart = pod(
            json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "web"}}, "spec": {
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}},
            "containers": [{"name": "c", "image": "i"}]}}),
        );
        assert!(unfit(&apart, &hosts[0], &hosts, &placed).is_some());
        assert_eq!(unfit(&apart, &hosts[1], &hosts, &placed), None);
    }
}
