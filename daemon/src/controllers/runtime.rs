//! The one runtime every controller runs on, in the spirit of
//! kube-runtime's `Controller` and client-go's work queue:
//! - a queue of keys, each queued once however often it is asked for, and
//!   never reconciled by two workers at once (a key asked for while it is
//!   being reconciled goes round again after);
//! - what enqueues a key: a change of the controller's own kind, of kinds
//!   it watches mapped to the keys they concern (a Pod to the ReplicaSet
//!   controlling it), a periodic resync of every key, and a lagged feed;
//! - per-key exponential back-off when a reconcile fails (5 ms doubling to
//!   1000 s, client-go's defaults), forgotten when it succeeds;
//!   `Ok(Requeue::After(d))` comes back after `d`;
//! - a bound on reconciles at once per controller;
//! - metrics per controller: queue depth, adds, retries, reconciles by
//!   result and their time, served as Prometheus text on `/metrics`.

use crate::registry::cache::{Cache, Change};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing until something changes.
    Never,
    /// Look again after this long (a schedule, a grace period).
    After(Duration),
}

/// Why a reconcile failed: it is tried again with back-off.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub type Result = std::result::Result<Requeue, Error>;

type BoxFuture<'a> = Pin<Box<dyn Future<Output = Result> + Send + 'a>>;

/// One controller: reconciles the object (or whatever) `key` names.
pub trait Reconciler: Send + Sync + 'static {
    fn reconcile<'a>(&'a self, key: &'a str) -> BoxFuture<'a>;
}

impl<F, Fut> Reconciler for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result> + Send + 'static,
{
    fn reconcile<'a>(&'a self, key: &'a str) -> BoxFuture<'a> {
        Box::pin(self(key.to_string()))
    }
}

/// Which keys a change enqueues.
pub type Mapper = Box<dyn Fn(&Change, &Cache) -> Vec<String> + Send + Sync>;
/// Every key a resync (or a lagged feed) enqueues.
pub type Lister = Box<dyn Fn(&Cache) -> Vec<String> + Send + Sync>;

/// A change of an object under `prefix` enqueues its key.
pub fn own(prefix: impl Into<String>) -> Mapper {
    let prefix = prefix.into();
    Box::new(move |ch, _| {
        if ch.key.starts_with(&prefix) {
            vec![ch.key.clone()]
        } else {
            vec![]
        }
    })
}

/// A change of an object under `child` enqueues the key of its
/// controlling owner, when that owner is under `owner`.
pub fn owner(child: impl Into<String>, owner: impl Into<String>) -> Mapper {
    let (child, owner) = (child.into(), owner.into());
    Box::new(move |ch, cache| {
        if !ch.key.starts_with(&child) {
            return vec![];
        }
        super::client::controller_uid(&ch.object)
            .and_then(|u| cache.by_uid(u))
            .filter(|(k, _)| k.starts_with(&owner))
            .map(|(k, _)| vec![k])
            .unwrap_or_default()
    })
}

/// Every key under `prefix`, for a resync.
pub fn all(prefix: impl Into<String>) -> Lister {
    let prefix = prefix.into();
    Box::new(move |cache| cache.list(&prefix).into_iter().map(|(k, _)| k).collect())
}

/// One key, always: for a controller that works on everything at once.
pub fn single(key: &'static str) -> Lister {
    Box::new(move |_| vec![key.to_string()])
}

/// Client-go's `ItemExponentialFailureRateLimiter` defaults.
const BACKOFF_BASE: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1000);

fn backoff(failures: u32) -> Duration {
    let factor = 1u64.checked_shl(failures.min(40)).unwrap_or(u64::MAX);
    BACKOFF_BASE
        .checked_mul(factor.min(u32::MAX as u64) as u32)
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX)
}

/// A controller's counters, as `/metrics` shows them.
#[derive(Default)]
pub struct Metrics {
    depth: AtomicU64,
    adds: AtomicU64,
    retries: AtomicU64,
    success: AtomicU64,
    requeue_after: AtomicU64,
    errors: AtomicU64,
    seconds_micros: AtomicU64,
}

impl Metrics {
    pub fn reconciles(&self) -> u64 {
        self.success.load(Ordering::Relaxed)
            + self.requeue_after.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }
}

/// Every controller's metrics, by name (kept across leadership terms).
fn registry() -> &'static Mutex<BTreeMap<&'static str, Arc<Metrics>>> {
    static R: OnceLock<Mutex<BTreeMap<&'static str, Arc<Metrics>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The metrics of the controller named `name`.
pub fn metrics(name: &'static str) -> Arc<Metrics> {
    registry()
        .lock()
        .expect("metrics")
        .entry(name)
        .or_default()
        .clone()
}

/// Every controller's metrics in Prometheus' text format, with
/// client-go's work queue names and controller-runtime's reconcile ones.
pub fn metrics_text() -> String {
    use std::fmt::Write;
    let all = registry().lock().expect("metrics").clone();
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, f: &dyn Fn(&str, &Metrics, &mut String)| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (c, m) in &all {
                f(c, m, &mut out);
            }
        };
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        "workqueue_depth",
        "gauge",
        "Current depth of workqueue",
        &|c, m, o| {
            let _ = writeln!(o, "workqueue_depth{{name=\"{c}\"}} {}", ld(&m.depth));
        },
    );
    family(
        "workqueue_adds_total",
        "counter",
        "Total number of adds handled by workqueue",
        &|c, m, o| {
            let _ = writeln!(o, "workqueue_adds_total{{name=\"{c}\"}} {}", ld(&m.adds));
        },
    );
    family(
        "workqueue_retries_total",
        "counter",
        "Total number of retries handled by workqueue",
        &|c, m, o| {
            let _ = writeln!(
                o,
                "workqueue_retries_total{{name=\"{c}\"}} {}",
                ld(&m.retries)
            );
        },
    );
    family(
        "controller_runtime_reconcile_total",
        "counter",
        "Total number of reconciliations per controller",
        &|c, m, o| {
            for (result, v) in [
                ("success", &m.success),
                ("requeue_after", &m.requeue_after),
                ("error", &m.errors),
            ] {
                let _ = writeln!(o, "controller_runtime_reconcile_total{{controller=\"{c}\",result=\"{result}\"}} {}", ld(v));
            }
        },
    );
    family(
        "controller_runtime_reconcile_errors_total",
        "counter",
        "Total number of reconciliation errors per controller",
        &|c, m, o| {
            let _ = writeln!(
                o,
                "controller_runtime_reconcile_errors_total{{controller=\"{c}\"}} {}",
                ld(&m.errors)
            );
        },
    );
    family(
        "controller_runtime_reconcile_time_seconds",
        "summary",
        "Length of time per reconciliation per controller",
        &|c, m, o| {
            let secs = ld(&m.seconds_micros) as f64 / 1e6;
            let _ = writeln!(
                o,
                "controller_runtime_reconcile_time_seconds_sum{{controller=\"{c}\"}} {secs}"
            );
            let _ = writeln!(
                o,
                "controller_runtime_reconcile_time_seconds_count{{controller=\"{c}\"}} {}",
                m.reconciles()
            );
        },
    );
    out
}

/// A controller, built then run.
pub struct Controller {
    name: &'static str,
    reconciler: Arc<dyn Reconciler>,
    mappers: Vec<Mapper>,
    lister: Option<Lister>,
    resync: Option<Duration>,
    concurrency: usize,
}

impl Controller {
    pub fn new(name: &'static str, reconciler: impl Reconciler) -> Self {
        Self {
            name,
            reconciler: Arc::new(reconciler),
            mappers: vec![],
            lister: None,
            resync: None,
            concurrency: 1,
        }
    }

    /// Changes `m` maps to keys enqueue those keys.
    pub fn watches(mut self, m: Mapper) -> Self {
        self.mappers.push(m);
        self
    }

    /// Every key `l` lists is enqueued at start, every `every` (if any), and
    /// when the change feed lagged and changes may have been missed.
    pub fn lists(mut self, l: Lister, every: Option<Duration>) -> Self {
        self.lister = Some(l);
        self.resync = every;
        self
    }

    /// At most `n` reconciles at once (different keys).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Run until `stop`, once the cache has synced.
    pub async fn run(self, cache: Arc<Cache>, stop: CancellationToken) {
        let mut rx = cache.subscribe();
        tokio::select! { _ = stop.cancelled() => return, _ = cache.synced() => {} }
        let metrics = metrics(self.name);
        let mut q = Queue::new(metrics.clone());
        let list_all = |q: &mut Queue| {
            if let Some(l) = &self.lister {
                for k in l(&cache) {
                    q.add(k);
                }
            }
        };
        list_all(&mut q);
        let mut resync = self.resync.map(|p| {
            let mut t = tokio::time::interval_at(Instant::now() + p, p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut running: JoinSet<(String, Result, Duration)> = JoinSet::new();
        loop {
            while running.len() < self.concurrency {
                let Some(key) = q.next() else { break };
                let r = self.reconciler.clone();
                running.spawn(async move {
                    let began = std::time::Instant::now();
                    let out = r.reconcile(&key).await;
                    (key, out, began.elapsed())
                });
            }
            let wake = q.next_delayed();
            tokio::select! {
                _ = stop.cancelled() => {
                    running.shutdown().await;
                    return;
                }
                ch = rx.recv() => match ch {
                    Ok(ch) => {
                        self.map(&ch, &cache, &mut q);
                        while let Ok(more) = rx.try_recv() {
                            self.map(&more, &cache, &mut q);
                        }
                    }
                    Err(RecvError::Lagged(_)) => list_all(&mut q),
                    Err(RecvError::Closed) => return,
                },
                _ = async { resync.as_mut().expect("guarded").tick().await }, if resync.is_some() => list_all(&mut q),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => q.promote(),
                Some(done) = running.join_next() => {
                    let Ok((key, out, took)) = done else { continue };
                    metrics.seconds_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                    match out {
                        Ok(Requeue::Never) => {
                            metrics.success.fetch_add(1, Ordering::Relaxed);
                            q.done(&key, None, false);
                        }
                        Ok(Requeue::After(d)) => {
                            metrics.requeue_after.fetch_add(1, Ordering::Relaxed);
                            q.done(&key, Some(d), false);
                        }
                        Err(e) => {
                            metrics.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(controller = self.name, key, error = %e, "reconcile failed; retrying with back-off");
                            q.done(&key, None, true);
                        }
                    }
                }
            }
        }
    }

    fn map(&self, ch: &Change, cache: &Cache, q: &mut Queue) {
        for m in &self.mappers {
            for k in m(ch, cache) {
                q.add(k);
            }
        }
    }
}

/// Client-go's work queue: FIFO of distinct keys, with the keys being
/// processed kept apart, and keys waiting for a time.
struct Queue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Asked for while being processed: queued again when done.
    again: HashSet<String>,
    delayed: BTreeMap<Instant, Vec<String>>,
    /// When each delayed key is due: a key waits once, for the earliest
    /// time asked (client-go's delaying queue).
    due_at: std::collections::HashMap<String, Instant>,
    failures: std::collections::HashMap<String, u32>,
    metrics: Arc<Metrics>,
}

impl Queue {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            processing: HashSet::new(),
            again: HashSet::new(),
            delayed: BTreeMap::new(),
            due_at: Default::default(),
            failures: Default::default(),
            metrics,
        }
    }

    fn gauge(&self) {
        self.metrics
            .depth
            .store(self.ready.len() as u64, Ordering::Relaxed);
    }

    fn add(&mut self, key: String) {
        self.metrics.adds.fetch_add(1, Ordering::Relaxed);
        if self.processing.contains(&key) {
            self.again.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
            self.gauge();
        }
    }

    fn add_after(&mut self, key: String, d: Duration) {
        let at = Instant::now() + d;
        if let Some(&earlier) = self.due_at.get(&key) {
            if earlier <= at {
                return;
            }
            if let Some(keys) = self.delayed.get_mut(&earlier) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.delayed.remove(&earlier);
                }
            }
        }
        self.due_at.insert(key.clone(), at);
        self.delayed.entry(at).or_default().push(key);
    }

    /// The next key to reconcile, now marked as being processed.
    fn next(&mut self) -> Option<String> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.processing.insert(key.clone());
        self.gauge();
        Some(key)
    }

    fn next_delayed(&self) -> Option<Instant> {
        self.delayed.keys().next().copied()
    }

    /// Keys whose time has come go to the queue.
    fn promote(&mut self) {
        let now = Instant::now();
        let later = self.delayed.split_off(&(now + Duration::from_nanos(1)));
        let due = std::mem::replace(&mut self.delayed, later);
        for k in due.into_values().flatten() {
            self.due_at.remove(&k);
            self.add(k);
        }
    }

    /// `key`'s reconcile ended: back off after a failure, come back after
    /// `after` if asked, and go again at once if it was asked for meanwhile.
    fn done(&mut self, key: &str, after: Option<Duration>, failed: bool) {
        self.processing.remove(key);
        if failed {
            let n = self.failures.entry(key.to_string()).or_insert(0);
            let wait = backoff(*n);
            *n += 1;
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
            self.again.remove(key);
            self.add_after(key.to_string(), wait);
            return;
        }
        self.failures.remove(key);
        if let Some(d) = after {
            self.add_after(key.to_string(), d);
        }
        if self.again.remove(key) {
            self.add(key.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn back_off_doubles_from_5ms_to_1000s() {
        assert_eq!(backoff(0), Duration::from_millis(5));
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(10), Duration::from_millis(5120));
        assert_eq!(backoff(30), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_key_is_queued_once_and_never_twice_at_once() {
        let mut q = Queue::new(Arc::default());
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.next().as_deref(), Some("a"));
        // Asked for while being processed: not handed out again now...
        q.add("a".into());
        assert_eq!(q.next().as_deref(), Some("b"));
        assert_eq!(q.next(), None);
        // ...but once its reconcile is done.
        q.done("a", None, false);
        assert_eq!(q.next().as_deref(), Some("a"));
        q.done("a", None, false);
        q.done("b", None, false);
        assert_eq!(q.next(), None);
    }

    #[test]
    fn a_delayed_key_waits_once_for_the_earliest_time() {
        let mut q = Queue::new(Arc::default());
        q.add_after("a".into(), Duration::from_secs(60));
        q.add_after("a".into(), Duration::from_secs(120));
        q.add_after("a".into(), Duration::from_millis(1));
        assert_eq!(q.delayed.values().flatten().count(), 1);
        std::thread::sleep(Duration::from_millis(5));
        q.promote();
        assert_eq!(q.next().as_deref(), Some("a"));
        assert!(q.delayed.is_empty() && q.due_at.is_empty());
    }

    /// A reconciler that fails `fail` times, then asks to come back after
    /// 200 ms once, recording when it ran.
    struct Flaky {
        fail: usize,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl Reconciler for Flaky {
        fn reconcile<'a>(&'a self, _key: &'a str) -> BoxFuture<'a> {
            Box::pin(async move {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Instant::now());
                let n = calls.len();
                if n <= self.fail {
                    Err("not yet".into())
                } else if n == self.fail + 1 {
                    Ok(Requeue::After(Duration::from_millis(200)))
                } else {
                    Ok(Requeue::Never)
                }
            })
        }
    }

    #[tokio::test]
    async fn failures_are_retried_with_back_off_and_requeue_after_is_honoured() {
        let cache = Arc::new(Cache::default());
        cache.mark_synced();
        let calls = Arc::new(Mutex::new(vec![]));
        let stop = CancellationToken::new();
        let c = Controller::new(
            "test-flaky",
            Flaky {
                fail: 5,
                calls: calls.clone(),
            },
        )
        .lists(single("only"), None);
        let task = tokio::spawn(c.run(cache, stop.clone()));
        let settled = async {
            loop {
                if calls.lock().unwrap().len() >= 7 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), settled)
            .await
            .expect("seven reconciles");
        stop.cancel();
        task.await.unwrap();
        let t = calls.lock().unwrap().clone();
        let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
        // Five failures: 5, 10, 20, 40, 80 ms apart, each longer than the last.
        for (i, g) in gaps[..5].iter().enumerate() {
            let want = backoff(i as u32);
            assert!(
                *g >= want,
                "retry {i} after {g:?}, before its back-off {want:?}"
            );
        }
        assert!(gaps[4] > gaps[0] * 8, "no back-off: {gaps:?}");
        // Then Requeue::After(200 ms).
        assert!(gaps[5] >= Duration::from_millis(200), "{gaps:?}");
        let m = metrics("test-flaky");
        assert_eq!(m.errors(), 5);
        assert_eq!(m.retries(), 5);
        assert_eq!(m.reconciles(), 7);
        assert!(metrics_text().contains(
            "controller_runtime_reconcile_total{controller=\"test-flaky\",result=\"error\"} 5"
        ));
    }

    #[tokio::test]
    async fn reconciles_run_at_most_concurrency_at_once() {
        struct Slow(Arc<AtomicUsize>, Arc<AtomicUsize>);
        impl Reconciler for Slow {
            fn reconcile<'a>(&'a self, _key: &'a str) -> BoxFuture<'a> {
                Box::pin(async move {
                    let now = self.0.fetch_add(1, Ordering::SeqCst) + 1;
                    self.1.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    self.0.fetch_sub(1, Ordering::SeqCst);
                    Ok(Requeue::Never)
                })
            }
        }
        let cache = Arc::new(Cache::default());
        cache.mark_synced();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let keys: Lister = Box::new(|_| (0..12).map(|i| format!("k{i}")).collect());
        let c = Controller::new("test-slow", Slow(now, most.clone()))
            .lists(keys, None)
            .concurrency(3);
        let task = tokio::spawn(c.run(cache, stop.clone()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.cancel();
        task.await.unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(metrics("test-slow").reconciles(), 12);
    }
}
