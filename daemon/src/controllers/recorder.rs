//! The Event recorder every component writes Events through (the
//! controllers, the scheduler and the kubelet), with client-go's
//! correlation:
//! - the same event again (same source, object, field path, type, reason
//!   and message) raises the stored Event's `count` and `lastTimestamp`
//!   instead of adding another;
//! - each (source, involved object) pair has a token bucket of 25 that
//!   refills one token every 5 minutes (`EventSourceObjectSpamFilter`): a
//!   controller creating a thousand pods writes 25 `SuccessfulCreate`
//!   Events, not a thousand, and an object that is always unhealthy
//!   cannot flood the datastore;
//! - events are queued and written by a task of their own, and dropped
//!   when the queue is full, so recording never slows its caller.
//!
//! Where Events are stored is the [`EventSink`]'s business: the registry
//! on a server, the API (with the node's own credentials) for a kubelet.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events a source may write about one object at once.
pub const BURST: f64 = 25.0;
/// One more allowed every this long.
pub const REFILL: Duration = Duration::from_secs(300);
/// Buckets and known events kept; upstream's LRUs hold 4096 too.
const MAX_KEYS: usize = 4096;
/// Events waiting to be written; beyond this they are dropped, as
/// upstream's broadcaster drops them rather than slow its callers.
const QUEUE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Why a sink could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Other(String),
}

/// Where Events are stored.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Create `event` (its namespace and name are set).
    async fn create(&self, event: &Event) -> Result<(), SinkError>;
    /// Set the stored event's `count`, `lastTimestamp` and `message`.
    async fn repeat(
        &self,
        namespace: &str,
        name: &str,
        count: i32,
        last: &Time,
        message: &str,
    ) -> Result<(), SinkError>;
}

/// One event to record.
struct Record {
    component: String,
    involved: ObjectReference,
    type_: EventType,
    reason: String,
    message: String,
    at: DateTime<Utc>,
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Record>,
}

impl Recorder {
    /// A recorder writing to `sink`, as a component on `host` (the node,
    /// for a kubelet; none for the controllers). Its task ends when the
    /// last clone is dropped.
    pub fn start(sink: Arc<dyn EventSink>, host: Option<String>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Record>(QUEUE);
        tokio::spawn(async move {
            let mut w = Writer {
                sink,
                host,
                spam: SpamFilter::default(),
                known: Known::default(),
            };
            while let Some(r) = rx.recv().await {
                w.write(r).await;
            }
        });
        Self { tx }
    }

    /// A recorder that writes nothing (tests of code that records).
    pub fn discard() -> Self {
        Self {
            tx: tokio::sync::mpsc::channel(1).0,
        }
    }

    /// Record an event about `involved` from `component`, in the background.
    pub fn record(
        &self,
        component: &str,
        involved: ObjectReference,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let r = Record {
            component: component.to_string(),
            involved,
            type_,
            reason: reason.to_string(),
            message: message.into(),
            at: Utc::now(),
        };
        if self.tx.try_send(r).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

struct Writer {
    sink: Arc<dyn EventSink>,
    host: Option<String>,
    spam: SpamFilter,
    known: Known,
}

impl Writer {
    async fn write(&mut self, r: Record) {
        let host = self.host.clone().unwrap_or_default();
        let spam = spam_key(&r.component, &host, &r.involved);
        if !self.spam.allow(&spam, Instant::now()) {
            tracing::trace!(reason = %r.reason, "event dropped by the spam filter");
            return;
        }
        let key = event_key(&r, &host);
        let ns = match r.involved.namespace.as_deref() {
            None | Some("") => "default".to_string(),
            Some(n) => n.to_string(),
        };
        let now = time(r.at);
        if let Some((name, count)) = self.known.get(&key) {
            let count = count + 1;
            match self.sink.repeat(&ns, &name, count, &now, &r.message).await {
                Ok(()) => {
                    self.known.put(key, name, count);
                    return;
                }
                // Gone (deleted, or expired): written anew below.
                Err(SinkError::NotFound) => {}
                Err(e) => {
                    tracing::debug!(reason = %r.reason, error = %e, "event not recorded");
                    return;
                }
            }
        }
        let name = event_name(r.involved.name.as_deref().unwrap_or_default(), r.at);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: r.involved,
            type_: Some(r.type_.as_str().into()),
            reason: Some(r.reason.clone()),
            message: Some(r.message),
            source: Some(EventSource {
                component: Some(r.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(r.component),
            reporting_instance: self.host.clone(),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            ..Default::default()
        };
        match self.sink.create(&event).await {
            Ok(()) => self.known.put(key, name, 1),
            Err(e) => tracing::debug!(reason = %r.reason, error = %e, "event not recorded"),
        }
    }
}

/// A reference to the object `v` (as stored: apiVersion, kind, metadata).
pub fn reference(v: &serde_json::Value) -> ObjectReference {
    let meta = &v["metadata"];
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    ObjectReference {
        api_version: text(&v["apiVersion"]),
        kind: text(&v["kind"]),
        namespace: text(&meta["namespace"]),
        name: text(&meta["name"]),
        uid: text(&meta["uid"]),
        resource_version: text(&meta["resourceVersion"]),
        field_path: None,
    }
}

/// client-go's `GenerateEventName`: the object's name and the time.
fn event_name(object: &str, at: DateTime<Utc>) -> String {
    let nanos = at.timestamp_nanos_opt().unwrap_or_default();
    format!("{object}.{nanos:x}")
}

fn time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_nanosecond(t.timestamp_nanos_opt().unwrap_or(0) as i128)
            .unwrap_or_default(),
    )
}

/// Events written so far, by their correlation key: (name, count). Oldest
/// forgotten first beyond [`MAX_KEYS`].
#[derive(Default)]
struct Known {
    map: HashMap<String, (String, i32)>,
    order: VecDeque<String>,
}

impl Known {
    fn get(&self, key: &str) -> Option<(String, i32)> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: String, name: String, count: i32) {
        if self.map.insert(key.clone(), (name, count)).is_none() {
            self.order.push_back(key);
            while self.order.len() > MAX_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// client-go's `getEventKey`: what makes two events the same one.
fn event_key(r: &Record, host: &str) -> String {
    let o = &r.involved;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        r.component.clone(),
        host.to_string(),
        s(&o.kind),
        s(&o.namespace),
        s(&o.name),
        s(&o.field_path),
        s(&o.uid),
        s(&o.api_version),
        r.type_.as_str().to_string(),
        r.reason.clone(),
        r.message.clone(),
    ]
    .join("\0")
}

/// The spam key of an Event: upstream's `getSpamKey` (source and the
/// involved object's kind, namespace, name, uid, apiVersion).
pub fn spam_key(component: &str, host: &str, o: &ObjectReference) -> String {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        component.to_string(),
        host.to_string(),
        s(&o.kind),
        s(&o.namespace),
        s(&o.name),
        s(&o.uid),
        s(&o.api_version),
    ]
    .join("\0")
}

#[derive(Default)]
pub struct SpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    /// Whether an Event with this spam key may be written at `now`;
    /// takes a token if so.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn reference(kind: &str, ns: &str, name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some(kind.into()),
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            api_version: Some("apps/v1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_burst_of_25_per_object_then_one_per_refill() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        let rs = reference("ReplicaSet", "d", "web", "u1");
        let other = reference("ReplicaSet", "d", "api", "u2");
        let key = spam_key("replicaset-controller", "", &rs);
        let allowed = (0..1000).filter(|_| f.allow(&key, t0)).count();
        assert_eq!(allowed, 25);
        // Another object, or another source about the same one, has its own.
        assert!(f.allow(&spam_key("replicaset-controller", "", &other), t0));
        assert!(f.allow(&spam_key("default-scheduler", "", &rs), t0));
        assert!(f.allow(&spam_key("kubelet", "n1", &rs), t0));
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
        let mut k = Known::default();
        for i in 0..(MAX_KEYS + 10) {
            k.put(format!("k{i}"), format!("n{i}"), 1);
        }
        assert_eq!(k.map.len(), MAX_KEYS);
        assert!(k.get("k0").is_none() && k.get(&format!("k{}", MAX_KEYS + 9)).is_some());
    }

    /// Events as a sink stores them: (namespace/name) → event.
    #[derive(Default)]
    struct Memory {
        events: Mutex<Vec<Event>>,
        refuse: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl EventSink for Memory {
        async fn create(&self, e: &Event) -> Result<(), SinkError> {
            if *self.refuse.lock().unwrap() {
                return Err(SinkError::Other("down".into()));
            }
            self.events.lock().unwrap().push(e.clone());
            Ok(())
        }
        async fn repeat(
            &self,
            _ns: &str,
            name: &str,
            count: i32,
            last: &Time,
            message: &str,
        ) -> Result<(), SinkError> {
            let mut events = self.events.lock().unwrap();
            let e = events
                .iter_mut()
                .find(|e| e.metadata.name.as_deref() == Some(name))
                .ok_or(SinkError::NotFound)?;
            e.count = Some(count);
            e.last_timestamp = Some(last.clone());
            e.message = Some(message.into());
            Ok(())
        }
    }

    async fn settle(sink: &Memory, n: usize) -> Vec<Event> {
        for _ in 0..200 {
            let e = sink.events.lock().unwrap().clone();
            if e.len() >= n {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.events.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn the_same_event_again_raises_its_count_and_a_gone_one_is_written_anew() {
        let sink = Arc::new(Memory::default());
        let r = Recorder::start(sink.clone(), Some("node-1".into()));
        let mut pod = reference("Pod", "", "web", "u1");
        pod.api_version = Some("v1".into());
        let mut c = pod.clone();
        c.field_path = Some("spec.containers{app}".into());
        for _ in 0..3 {
            r.record("kubelet", c.clone(), EventType::Warning, "BackOff", "again");
        }
        // Another field path, or another message, is another event.
        r.record(
            "kubelet",
            pod.clone(),
            EventType::Warning,
            "BackOff",
            "again",
        );
        r.record("kubelet", c.clone(), EventType::Warning, "BackOff", "other");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let events = settle(&sink, 3).await;
        assert_eq!(events.len(), 3, "{events:?}");
        let first = &events[0];
        assert_eq!(first.count, Some(3));
        assert_eq!(first.metadata.namespace.as_deref(), Some("default"));
        assert!(first.metadata.name.as_deref().unwrap().starts_with("web."));
        let source = first.source.clone().unwrap();
        assert_eq!(source.component.as_deref(), Some("kubelet"));
        assert_eq!(source.host.as_deref(), Some("node-1"));
        assert_eq!(first.reporting_instance.as_deref(), Some("node-1"));
        assert_eq!(first.type_.as_deref(), Some("Warning"));
        // The stored one went away: the next repeat writes it again.
        sink.events.lock().unwrap().clear();
        r.record("kubelet", c.clone(), EventType::Warning, "BackOff", "again");
        let again = settle(&sink, 1).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].count, Some(1));
        // A sink that fails drops the event; the recorder carries on.
        *sink.refuse.lock().unwrap() = true;
        r.record("kubelet", pod.clone(), EventType::Normal, "Started", "x");
        tokio::time::sleep(Duration::from_millis(100)).await;
        *sink.refuse.lock().unwrap() = false;
        r.record("kubelet", pod, EventType::Normal, "Started", "y");
        let after = settle(&sink, 2).await;
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(after[1].message.as_deref(), Some("y"));
    }
}
