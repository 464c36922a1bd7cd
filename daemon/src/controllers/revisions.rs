//! ControllerRevisions: the template history of DaemonSets and
//! StatefulSets, which `kubectl rollout history/undo` read. One revision
//! per distinct template, named `<owner>-<hash>`; going back to an older
//! template renumbers its revision as the newest, as upstream does.

use super::client::{controlled, controller_ref, s, Client};
use super::deployment::template_hash;
use crate::registry::cache::Cache;
use crate::registry::kinds;
use crate::registry::KubeError;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::LazyLock;

static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::CONTROLLER_REVISIONS.prefix(None));
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The revision of an owner's current template.
pub struct Current {
    /// `<owner>-<hash>`: the revision's name.
    pub name: String,
    pub hash: String,
    pub number: i64,
}

fn number(cr: &Value) -> i64 {
    cr["revision"].as_i64().unwrap_or(0)
}

/// The owner's revisions, oldest first.
pub fn list(cache: &Cache, owner_uid: &str) -> Vec<Value> {
    let mut crs: Vec<Value> = controlled(cache, owner_uid, PREFIX.as_str())
        .into_iter()
        .map(|v| (*v).clone())
        .collect();
    crs.sort_by_key(number);
    crs
}

/// Make sure the owner's template has a revision, the newest; drop the
/// oldest unused ones beyond `limit`. `in_use` are names still used by
/// pods (kept whatever their age).
pub async fn ensure(
    c: &Client,
    cache: &Cache,
    owner: &Value,
    kind: &str,
    limit: i64,
    in_use: &HashSet<String>,
) -> Result<Current, KubeError> {
    let uid = s(owner, "/metadata/uid");
    let ns = s(owner, "/metadata/namespace");
    let owner_name = s(owner, "/metadata/name");
    let mut template = owner["spec"]["template"].clone();
    let hash = template_hash(&template, 0);
    let name = format!("{owner_name}-{hash}");
    let crs = list(cache, uid);
    let max = crs.iter().map(number).max().unwrap_or(0);
    let rt = kinds::CONTROLLER_REVISIONS.resource_type();
    let current = match crs.iter().find(|cr| s(cr, "/metadata/name") == name) {
        Some(cr) if number(cr) < max => {
            c.update(&rt, ns, &name, false, |o| {
                o["revision"] = json!(max + 1);
                true
            })
            .await?;
            max + 1
        }
        Some(cr) => number(cr),
        None => {
            template["$patch"] = json!("replace");
            let mut labels = owner["spec"]["template"]["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels[HASH_LABEL] = json!(hash);
            let cr = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                    "ownerReferences": [controller_ref(owner, "apps/v1", kind)]},
                "data": {"spec": {"template": template}}, "revision": max + 1});
            match c.create(&rt, ns, cr).await {
                Ok(_) | Err(KubeError::AlreadyExists(_)) => max + 1,
                Err(e) => return Err(e),
            }
        }
    };
    let old: Vec<&Value> = crs
        .iter()
        .filter(|cr| {
            let n = s(cr, "/metadata/name");
            n != name && !in_use.contains(n)
        })
        .collect();
    let extra = old.len().saturating_sub(limit.max(0) as usize);
    for cr in old.into_iter().take(extra) {
        c.delete(&rt, ns, s(cr, "/metadata/name"), s(cr, "/metadata/uid"))
            .await?;
    }
    Ok(Current {
        name,
        hash,
        number: current,
    })
}
