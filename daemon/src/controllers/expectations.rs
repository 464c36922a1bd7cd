//! Upstream's "expectations": what a controller just created or deleted
//! for an owner and the watch cache has not shown yet. Until the cache
//! catches up the owner is left alone, so a slow cache never yields extra
//! or missing pods.

use super::client::{deleting, s};
use crate::registry::cache::Cache;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// An expectation the cache never confirmed is given up after this long.
const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Option<Instant>,
}

/// Per owner uid, the names of dependents created or deleted.
#[derive(Default)]
pub struct Expectations(HashMap<String, Pending>);

impl Expectations {
    /// Whether the cache shows everything done for `owner` (or it is too
    /// old to wait for).
    pub fn satisfied(&mut self, cache: &Cache, owner: &str) -> bool {
        let Some(e) = self.0.get_mut(owner) else {
            return true;
        };
        let present: HashSet<String> = cache
            .dependents(owner)
            .into_iter()
            .filter(|(_, p)| !deleting(p))
            .map(|(_, p)| s(&p, "/metadata/name").to_string())
            .collect();
        e.created.retain(|n| !present.contains(n));
        e.deleted.retain(|n| present.contains(n));
        let fresh = e.at.is_some_and(|t| t.elapsed() < TTL);
        if (e.created.is_empty() && e.deleted.is_empty()) || !fresh {
            self.0.remove(owner);
            return true;
        }
        false
    }

    fn pending(&mut self, owner: &str) -> &mut Pending {
        let e = self.0.entry(owner.to_string()).or_default();
        e.at = Some(Instant::now());
        e
    }

    pub fn created(&mut self, owner: &str, name: &str) {
        self.pending(owner).created.insert(name.to_string());
    }

    pub fn deleted(&mut self, owner: &str, name: &str) {
        self.pending(owner).deleted.insert(name.to_string());
    }

    pub fn forget(&mut self, owner: &str) {
        self.0.remove(owner);
    }
}
