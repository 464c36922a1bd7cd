//! The Event recorder's spam filter, as upstream's
//! `EventSourceObjectSpamFilter`: each (source, involved object) pair has
//! a token bucket of 25 that refills one token every 5 minutes. A
//! controller creating a thousand pods writes 25 `SuccessfulCreate`
//! Events, not a thousand, and an object that is always unhealthy cannot
//! flood the datastore.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Events a source may write about one object at once.
pub const BURST: f64 = 25.0;
/// One more allowed every this long.
pub const REFILL: Duration = Duration::from_secs(300);
/// Buckets kept; upstream's LRU holds 4096 too.
const MAX_KEYS: usize = 4096;

#[derive(Default)]
pub struct SpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    /// Whether an Event with this spam key (source plus involved object)
    /// may be written at `now`; takes a token if so.
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_KEYS {
            // Buckets that have refilled say nothing a new one would not.
            self.buckets
                .retain(|_, (tokens, at)| level(*tokens, *at, now) < BURST);
            if self.buckets.len() >= MAX_KEYS {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self.buckets.entry(key.to_string()).or_insert((BURST, now));
        let available = level(*tokens, *at, now);
        *at = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            true
        } else {
            *tokens = available;
            false
        }
    }
}

fn level(tokens: f64, at: Instant, now: Instant) -> f64 {
    let refilled = now.saturating_duration_since(at).as_secs_f64() / REFILL.as_secs_f64();
    (tokens + refilled).min(BURST)
}

/// The spam key of an Event: upstream's `getSpamKey` (source component
/// and the involved object's kind, namespace, name, uid, apiVersion).
pub fn spam_key(component: &str, involved: &serde_json::Value) -> String {
    let m = &involved["metadata"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    [
        component.to_string(),
        s(&involved["kind"]),
        s(&m["namespace"]),
        s(&m["name"]),
        s(&m["uid"]),
        s(&involved["apiVersion"]),
    ]
    .join("\0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_burst_of_25_per_object_then_one_per_refill() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        let rs = json!({"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {"namespace": "d", "name": "web", "uid": "u1"}});
        let other = json!({"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {"namespace": "d", "name": "api", "uid": "u2"}});
        let key = spam_key("replicaset-controller", &rs);
        let allowed = (0..1000).filter(|_| f.allow(&key, t0)).count();
        assert_eq!(allowed, 25);
        // Another object, or another source about the same one, has its own.
        assert!(f.allow(&spam_key("replicaset-controller", &other), t0));
        assert!(f.allow(&spam_key("default-scheduler", &rs), t0));
        // One token back after a refill period, not more.
        let later = t0 + REFILL + Duration::from_millis(1);
        assert!(f.allow(&key, later));
        assert!(!f.allow(&key, later));
        // A long quiet time refills to the burst, no further.
        let much_later = later + REFILL * 100;
        assert_eq!((0..100).filter(|_| f.allow(&key, much_later)).count(), 25);
    }

    #[test]
    fn the_bucket_table_is_bounded() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            assert!(f.allow(&format!("k{i}"), t0));
        }
        assert!(f.buckets.len() <= MAX_KEYS);
    }
}
