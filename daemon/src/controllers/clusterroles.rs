//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` gets as
//! rules the rules of every ClusterRole its selectors match (in name
//! order, duplicates dropped), kept up to date as those change.

use crate::registry::cache::Cache;
use crate::registry::validation::selector_matches;
use crate::registry::Registry;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/registry/rbac.authorization.k8s.io/clusterroles/";
const RESYNC: Duration = Duration::from_secs(30);

pub async fn run(reg: Arc<Registry>, cache: Arc<Cache>, stop: CancellationToken) {
    let mut rx = cache.subscribe();
    tokio::select! { _ = stop.cancelled() => return, _ = cache.synced() => {} }
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => aggregate(&reg, &cache).await,
            ch = rx.recv() => match ch {
                Ok(ch) if ch.key.starts_with(PREFIX) => aggregate(&reg, &cache).await,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// The rules an aggregated role should have, from `roles`.
pub fn aggregated_rules(role: &ClusterRole, roles: &[ClusterRole]) -> Vec<Value> {
    let Some(selectors) = role
        .aggregation_rule
        .as_ref()
        .and_then(|a| a.cluster_role_selectors.as_ref())
    else {
        return vec![];
    };
    let mut rules: Vec<Value> = vec![];
    for other in roles {
        if other.metadata.name == role.metadata.name {
            continue;
        }
        if !selectors
            .iter()
            .any(|s| selector_matches(s, other.metadata.labels.as_ref()))
        {
            continue;
        }
        for r in other.rules.iter().flatten() {
            let v = serde_json::to_value(r).unwrap_or_default();
            if !rules.contains(&v) {
                rules.push(v);
            }
        }
    }
    rules
}

async fn aggregate(reg: &Registry, cache: &Cache) {
    let roles: Vec<ClusterRole> = cache
        .list(PREFIX)
        .into_iter()
        .filter_map(|(_, v)| ClusterRole::deserialize(&*v).ok())
        .collect();
    for role in roles.iter().filter(|r| r.aggregation_rule.is_some()) {
        let want = aggregated_rules(role, &roles);
        let have: Vec<Value> = role
            .rules
            .iter()
            .flatten()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect();
        if want == have {
            continue;
        }
        let name = role.metadata.name.clone().unwrap_or_default();
        let r = reg
            .modify(&format!("{PREFIX}{name}"), |v| {
                v["rules"] = json!(want);
                true
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(clusterrole = name, error = %e, "could not aggregate a ClusterRole");
        }
    }
}
