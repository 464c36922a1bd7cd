//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` gets as
//! rules the rules of every ClusterRole its selectors match (in name
//! order, duplicates dropped), kept up to date as those change.

use super::runtime::{single, Controller, Requeue};
use crate::registry::cache::Cache;
use crate::registry::validation::selector_matches;
use crate::registry::{kinds, KubeError, Registry};
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const RESYNC: Duration = Duration::from_secs(30);

/// Aggregation as a controller of one key: any ClusterRole change, and a
/// resync, look at every aggregated role.
pub fn controller(reg: Arc<Registry>, cache: Arc<Cache>) -> Controller {
    let prefix = kinds::CLUSTER_ROLES.prefix(None);
    let roles = prefix.clone();
    Controller::new("clusterrole-aggregation", move |_key: String| {
        let (reg, cache) = (reg.clone(), cache.clone());
        async move {
            aggregate(&reg, &cache).await?;
            Ok(Requeue::Never)
        }
    })
    .watches(Box::new(move |ch, _| {
        if ch.key.starts_with(&roles) {
            vec!["clusterroles".to_string()]
        } else {
            vec![]
        }
    }))
    .lists(single("clusterroles"), Some(RESYNC))
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

async fn aggregate(reg: &Registry, cache: &Cache) -> Result<(), KubeError> {
    let rt = kinds::CLUSTER_ROLES.resource_type();
    let roles: Vec<ClusterRole> = cache
        .list(&kinds::CLUSTER_ROLES.prefix(None))
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
        reg.modify_in(&rt, None, &name, None, |v| {
            v["rules"] = json!(want);
            true
        })
        .await?;
    }
    Ok(())
}
