//! Routes to the other nodes' pods, flannel's host-gw idea: every other
//! node's pod CIDR via that node's InternalIP, which must be on a shared
//! link. The routes carry their own protocol number, so an agent finds the
//! ones it installed (also after a restart) and removes those no node wants.

use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeSet;
use tokio::process::Command;

/// `proto` of the routes the agent installs (unused by iproute2's
/// `rt_protos` and the routing daemons Debian ships).
pub const PROTO: &str = "241";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// A node's pod CIDR, `10.42.1.0/24`.
    pub dst: String,
    /// That node's InternalIP.
    pub via: String,
}

fn internal_ip(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP" && a.address.parse::<std::net::Ipv4Addr>().is_ok())
        .map(|a| a.address.clone())
}

/// Every other node's pod CIDR via its InternalIP (nodes without either
/// are skipped until they have both).
pub fn wanted<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str) -> BTreeSet<Route> {
    nodes
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            Some(Route {
                dst: n.spec.as_ref()?.pod_cidr.clone()?,
                via: internal_ip(n)?,
            })
        })
        .collect()
}

/// `ip -j route show proto 241` as routes; a host route shows without its
/// `/32`, which no pod CIDR is.
fn parse_installed(json: &[u8]) -> Result<BTreeSet<Route>, String> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| format!("unexpected `ip -j route` output: {e}"))?;
    Ok(v.iter()
        .filter_map(|r| {
            Some(Route {
                dst: r["dst"].as_str()?.to_string(),
                via: r["gateway"].as_str()?.to_string(),
            })
        })
        .collect())
}

async fn ip(args: &[&str]) -> Result<Vec<u8>, String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The routes this agent installed.
pub async fn installed() -> Result<BTreeSet<Route>, String> {
    parse_installed(&ip(&["-j", "route", "show", "proto", PROTO]).await?)
}

/// Make the installed routes `want`: remove the others, add the missing.
/// Returns what failed (a gateway not on a shared link, say), each once.
pub async fn apply(want: &BTreeSet<Route>) -> Result<Vec<String>, String> {
    let have = installed().await?;
    let mut failed = vec![];
    for r in have.difference(want) {
        match ip(&["route", "del", &r.dst, "via", &r.via, "proto", PROTO]).await {
            Ok(_) => tracing::info!(dst = %r.dst, via = %r.via, "route to a node's pods removed"),
            Err(e) => failed.push(e),
        }
    }
    for r in want.difference(&have) {
        match ip(&["route", "replace", &r.dst, "via", &r.via, "proto", PROTO]).await {
            Ok(_) => tracing::info!(dst = %r.dst, via = %r.via, "route to a node's pods added"),
            Err(e) => failed.push(e),
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut v = json!({"metadata": {"name": name}, "spec": {}, "status": {"addresses": [
            {"type": "Hostname", "address": name}]}});
        if let Some(c) = cidr {
            v["spec"]["podCIDR"] = json!(c);
        }
        if let Some(i) = ip {
            v["status"]["addresses"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "InternalIP", "address": i}));
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn other_nodes_with_a_cidr_and_an_address() {
        let nodes = [
            node("me", Some("10.42.0.0/24"), Some("10.0.0.1")),
            node("b", Some("10.42.1.0/24"), Some("10.0.0.2")),
            node("c", None, Some("10.0.0.3")),
            node("d", Some("10.42.3.0/24"), None),
            node("e", Some("10.42.4.0/24"), Some("fd00::5")),
        ];
        let w = wanted(&nodes, "me");
        assert_eq!(
            w.into_iter().collect::<Vec<_>>(),
            vec![Route {
                dst: "10.42.1.0/24".into(),
                via: "10.0.0.2".into()
            }]
        );
    }

    #[test]
    fn parses_ip_json() {
        let out = br#"[{"dst":"10.42.1.0/24","gateway":"10.77.0.21","dev":"eth0","protocol":"241","flags":[]},
                       {"dst":"10.42.2.0/24","dev":"eth0","flags":[]}]"#;
        let r = parse_installed(out).unwrap();
        assert_eq!(r.len(), 1);
        assert!(parse_installed(b"not json").is_err());
    }
}
