//! Endpoints and EndpointSlices of Services with a selector, from the
//! pods that match it and have an IP, as upstream's two controllers write
//! them: ready pods as addresses, others as notReadyAddresses (all ready
//! with `publishNotReadyAddresses`), terminating pods left out of
//! Endpoints and marked `terminating` in slices. Named target ports are
//! looked up in each pod, so pods whose ports differ land in different
//! subsets (and slices). Slices hold at most 100 endpoints each, as
//! upstream's default.
//!
//! A pod change dirties the Services of its namespace; the write follows
//! within the same pass. Selectorless Services keep the Endpoints users
//! write; a deleted Service's Endpoints go (its slices are owned by it,
//! the garbage collector removes them).

use super::client::{controller_ref, s, Client};
use super::predicates::{deleting, ready, terminal};
use super::runtime::{all, Controller, Requeue};
use std::sync::LazyLock;

use crate::registry::cache::{Cache, Change};
use crate::registry::kinds;
use crate::registry::validation::selector_matches;
use crate::registry::KubeError;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

static SERVICES: LazyLock<String> = LazyLock::new(|| kinds::SERVICES.prefix(None));
static PODS: LazyLock<String> = LazyLock::new(|| kinds::PODS.prefix(None));
const RESYNC: Duration = Duration::from_secs(30);
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_PER_SLICE: usize = 100;

/// One pod as an endpoint.
struct Ep {
    ip: String,
    node: String,
    name: String,
    uid: String,
    hostname: Option<String>,
    ready: bool,
    terminating: bool,
}

/// The service's ports as this pod serves them: (name, port, protocol).
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<(String, i32, String)> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut out = vec![];
    for p in spec.ports.iter().flatten() {
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = match &p.target_port {
            None => Some(p.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => name.parse().ok().or_else(|| {
                pod.spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .map(|cp| cp.container_port)
            }),
        };
        if let Some(port) = port {
            out.push((p.name.clone().unwrap_or_default(), port, proto));
        }
    }
    out
}

type Groups = BTreeMap<Vec<(String, i32, String)>, Vec<Ep>>;

/// The matching pods, grouped by the ports they serve.
fn endpoints_of(cache: &Cache, svc: &Service) -> Groups {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let sel = LabelSelector {
        match_labels: spec.selector.clone(),
        match_expressions: None,
    };
    let publish = spec.publish_not_ready_addresses == Some(true);
    let mut groups: Groups = BTreeMap::new();
    for (_, v) in cache.list(&kinds::PODS.prefix(Some(&ns))) {
        if terminal(&v) || s(&v, "/status/podIP").is_empty() {
            continue;
        }
        let Ok(pod) = Pod::deserialize(&*v) else {
            continue;
        };
        if !selector_matches(&sel, pod.metadata.labels.as_ref()) {
            continue;
        }
        let pspec = pod.spec.clone().unwrap_or_default();
        let hostname = pspec
            .hostname
            .clone()
            .filter(|_| pspec.subdomain.as_deref() == Some(name.as_str()));
        let ep = Ep {
            ip: s(&v, "/status/podIP").to_string(),
            node: pspec.node_name.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            hostname,
            ready: publish || ready(&v),
            terminating: deleting(&v),
        };
        groups.entry(pod_ports(svc, &pod)).or_default().push(ep);
    }
    for eps in groups.values_mut() {
        eps.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.name.cmp(&b.name)));
    }
    groups
}

fn target_ref(ns: &str, e: &Ep) -> Value {
    json!({"kind": "Pod", "namespace": ns, "name": e.name, "uid": e.uid})
}

/// `subsets` of the Endpoints object.
fn subsets(ns: &str, groups: &Groups) -> Value {
    let mut out = vec![];
    for (ports, eps) in groups {
        let addr = |e: &Ep| {
            let mut a = json!({"ip": e.ip, "targetRef": target_ref(ns, e)});
            if !e.node.is_empty() {
                a["nodeName"] = json!(e.node);
            }
            if let Some(h) = &e.hostname {
                a["hostname"] = json!(h);
            }
            a
        };
        let live: Vec<&Ep> = eps.iter().filter(|e| !e.terminating).collect();
        let ready: Vec<Value> = live.iter().filter(|e| e.ready).map(|e| addr(e)).collect();
        let not_ready: Vec<Value> = live.iter().filter(|e| !e.ready).map(|e| addr(e)).collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut sub = json!({"ports": ports.iter().map(|(n, p, proto)| {
            let mut o = json!({"port": p, "protocol": proto});
            if !n.is_empty() { o["name"] = json!(n); }
            o
        }).collect::<Vec<_>>()});
        if !ready.is_empty() {
            sub["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            sub["notReadyAddresses"] = json!(not_ready);
        }
        out.push(sub);
    }
    json!(out)
}

/// The slices' contents: (endpoints, ports) per slice.
fn slices(ns: &str, groups: &Groups) -> Vec<(Value, Value)> {
    let mut out = vec![];
    for (ports, eps) in groups {
        let ports = json!(ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
            .collect::<Vec<_>>());
        for chunk in eps.chunks(MAX_PER_SLICE) {
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|e| {
                    let mut o = json!({"addresses": [e.ip],
                        "conditions": {"ready": e.ready && !e.terminating, "serving": e.ready, "terminating": e.terminating},
                        "targetRef": target_ref(ns, e)});
                    if !e.node.is_empty() {
                        o["nodeName"] = json!(e.node);
                    }
                    if let Some(h) = &e.hostname {
                        o["hostname"] = json!(h);
                    }
                    o
                })
                .collect();
            out.push((json!(endpoints), ports.clone()));
        }
    }
    out
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
}

impl Ctl {
    async fn sync(&self, key: &str) -> Result<(), KubeError> {
        let Some((ns, name)) = key
            .strip_prefix(SERVICES.as_str())
            .and_then(|k| k.split_once('/'))
        else {
            return Ok(());
        };
        let ep_rt = kinds::ENDPOINTS.resource_type();
        let Some(v) = self.cache.get(key) else {
            // The Service is gone: so are its Endpoints.
            if let Some(e) = self.cache.get(&kinds::ENDPOINTS.key(Some(ns), name)) {
                self.c
                    .delete(&ep_rt, ns, name, s(&e, "/metadata/uid"))
                    .await?;
            }
            return Ok(());
        };
        let Ok(svc) = serde_json::from_value::<Service>(v.clone()) else {
            return Ok(());
        };
        let has_selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|m| !m.is_empty());
        if !has_selector || deleting(&v) {
            return Ok(());
        }
        let groups = endpoints_of(&self.cache, &svc);
        self.write_endpoints(&v, ns, name, subsets(ns, &groups))
            .await?;
        self.write_slices(&v, ns, name, slices(ns, &groups)).await
    }

    async fn write_endpoints(
        &self,
        svc: &Value,
        ns: &str,
        name: &str,
        subsets: Value,
    ) -> Result<(), KubeError> {
        let rt = kinds::ENDPOINTS.resource_type();
        let mut labels = svc["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        if s(svc, "/spec/clusterIP") == "None" {
            labels["service.kubernetes.io/headless"] = json!("");
        }
        let empty = subsets.as_array().is_none_or(|a| a.is_empty());
        let existing = self.cache.get(&kinds::ENDPOINTS.key(Some(ns), name));
        match existing {
            None => {
                let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": labels}});
                if !empty {
                    ep["subsets"] = subsets;
                }
                match self.c.create(&rt, ns, ep).await {
                    Ok(_) | Err(KubeError::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Some(cur) => {
                let same = |o: &Value| {
                    let have = o.get("subsets").cloned().unwrap_or(json!([]));
                    have == subsets && o["metadata"]["labels"] == labels
                };
                if same(&cur) {
                    return Ok(());
                }
                self.c
                    .update(&rt, ns, name, false, |o| {
                        if same(o) {
                            return false;
                        }
                        o["metadata"]["labels"] = labels.clone();
                        if empty {
                            o.as_object_mut().map(|m| m.remove("subsets"));
                        } else {
                            o["subsets"] = subsets.clone();
                        }
                        true
                    })
                    .await
            }
        }
    }

    async fn write_slices(
        &self,
        svc: &Value,
        ns: &str,
        name: &str,
        want: Vec<(Value, Value)>,
    ) -> Result<(), KubeError> {
        let rt = kinds::ENDPOINT_SLICES.resource_type();
        let mut have: Vec<Value> = self
            .cache
            .list(&kinds::ENDPOINT_SLICES.prefix(Some(ns)))
            .into_iter()
            .map(|(_, v)| std::sync::Arc::unwrap_or_clone(v))
            .filter(|v| {
                v["metadata"]["labels"][SERVICE_NAME_LABEL] == name
                    && v["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
            })
            .collect();
        have.sort_by_key(|v| s(v, "/metadata/name").to_string());
        // A Service without endpoints still has one (empty) slice, as upstream.
        let want = if want.is_empty() {
            vec![(json!([]), json!([]))]
        } else {
            want
        };
        let mut labels = svc["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels[SERVICE_NAME_LABEL] = json!(name);
        labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
        for (i, (endpoints, ports)) in want.iter().enumerate() {
            match have.get(i) {
                Some(cur) => {
                    let same = |o: &Value| {
                        o.get("endpoints").cloned().unwrap_or(json!([])) == *endpoints
                            && o.get("ports").cloned().unwrap_or(json!([])) == *ports
                    };
                    if same(cur) {
                        continue;
                    }
                    self.c
                        .update(&rt, ns, s(cur, "/metadata/name"), false, |o| {
                            if same(o) {
                                return false;
                            }
                            o["endpoints"] = endpoints.clone();
                            o["ports"] = ports.clone();
                            true
                        })
                        .await?;
                }
                None => {
                    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"generateName": format!("{name}-"), "namespace": ns, "labels": labels,
                            "ownerReferences": [controller_ref(svc, "v1", "Service")]},
                        "addressType": "IPv4", "endpoints": endpoints, "ports": ports});
                    self.c.create(&rt, ns, slice).await?;
                }
            }
        }
        for extra in have.iter().skip(want.len()) {
            self.c
                .delete(
                    &rt,
                    ns,
                    s(extra, "/metadata/name"),
                    s(extra, "/metadata/uid"),
                )
                .await?;
        }
        Ok(())
    }
}

/// The Services a change concerns: a Service's own, and every Service in
/// the namespace of a pod that changed.
fn services_of(ch: &Change, cache: &Cache) -> Vec<String> {
    if ch.key.starts_with(SERVICES.as_str()) {
        return vec![ch.key.clone()];
    }
    let Some((ns, _)) = ch
        .key
        .strip_prefix(PODS.as_str())
        .and_then(|r| r.split_once('/'))
    else {
        return vec![];
    };
    cache
        .list(&kinds::SERVICES.prefix(Some(ns)))
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Endpoints and EndpointSlices of every Service: its own changes and its
/// namespace's pods', and a resync.
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let ctl = Arc::new(Ctl { c, cache });
    Controller::new("endpoints", move |key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.sync(&key).await?;
            Ok(Requeue::Never)
        }
    })
    .watches(Box::new(services_of))
    .lists(all(SERVICES.as_str()), Some(RESYNC))
    .concurrency(5)
}
