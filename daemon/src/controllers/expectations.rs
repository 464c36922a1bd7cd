//! Upstream's "expectations": what a controller just created or deleted
//! for an owner and the watch cache has not shown yet. Until the cache
//! catches up the owner is left alone, so a slow cache never yields extra
//! or missing pods.

use super::client::s;
use super::predicates::deleting;
use crate::registry::cache::Cache;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An expectation the cache never confirmed is given up after this long.
const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Option<Instant>,
}

/// Per owner uid, the names of dependents created or deleted (shared by
/// a controller's concurrent reconciles of different owners).
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Pending>>);

impl Expectations {
    /// Whether the cache shows everything done for `owner` (or it is too
    /// old to wait for).
    pub fn satisfied(&self, cache: &Cache, owner: &str) -> bool {
        let mut all = self.0.lock().expect("expectations");
        let Some(e) = all.get_mut(owner) else {
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
            all.remove(owner);
            return true;
        }
        false
    }

    fn pending(&self, owner: &str, f: impl FnOnce(&mut Pending)) {
        let mut all = self.0.lock().expect("expectations");
        let e = all.entry(owner.to_string()).or_default();
        e.at = Some(Instant::now());
        f(e);
    }

    pub fn created(&self, owner: &str, name: &str) {
        self.pending(owner, |p| {
            p.created.insert(name.to_string());
        });
    }

    pub fn deleted(&self, owner: &str, name: &str) {
        self.pending(owner, |p| {
            p.deleted.insert(name.to_string());
        });
    }

    pub fn forget(&self, owner: &str) {
        self.0.lock().expect("expectations").remove(owner);
    }
}
