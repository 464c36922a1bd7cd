//! The Events the kubelet records about this node's pods, their
//! containers and the node itself, with upstream's reasons and wording,
//! through the shared recorder (de-duplicated into counts, rate-limited
//! per object) and the node's own credentials: source and reporting
//! component `kubelet`, this host as the instance. Best effort: an event
//! that cannot be written is dropped, as upstream's recorder drops them.

use crate::agent::apiclient::{Api, ApiError};
use crate::controllers::recorder::{EventSink, EventType, Recorder, SinkError};
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::controllers::recorder::EventType::{Normal, Warning};

const COMPONENT: &str = "kubelet";

/// The same event about the same object is recorded at most this often.
/// Upstream's kubelet syncs a pod that keeps failing about every 10 s;
/// this one syncs every second, and an event from each sync would use up
/// the object's share of the spam filter within seconds, dropping its
/// other events. A repeat still raises the count, ten seconds apart.
const REPEAT_EVERY: Duration = Duration::from_secs(10);
/// Entries kept to tell repeats; older ones go first beyond this.
const RECENT_MAX: usize = 4096;

/// Events written through the API, as the node.
struct ApiSink(Api);

fn sink_error(e: ApiError) -> SinkError {
    match e {
        ApiError::Status { status: 409, .. } => SinkError::AlreadyExists,
        ApiError::Status { status: 404, .. } => SinkError::NotFound,
        e => SinkError::Other(e.to_string()),
    }
}

#[async_trait::async_trait]
impl EventSink for ApiSink {
    async fn create(&self, e: &Event) -> Result<(), SinkError> {
        let ns = e.metadata.namespace.clone().unwrap_or_default();
        let body = serde_json::to_value(e).map_err(|e| SinkError::Other(e.to_string()))?;
        self.0
            .post(&format!("/api/v1/namespaces/{ns}/events"), &body)
            .await
            .map(|_| ())
            .map_err(sink_error)
    }

    /// A merge patch, as client-go's recorder patches a repeated event
    /// (the Node authorizer lets a node write events, not read them).
    async fn repeat(
        &self,
        ns: &str,
        name: &str,
        count: i32,
        last: &Time,
        message: &str,
    ) -> Result<(), SinkError> {
        let body = serde_json::json!({"count": count, "lastTimestamp": last, "message": message});
        self.0
            .patch(
                &format!("/api/v1/namespaces/{ns}/events/{name}"),
                "application/merge-patch+json",
                &body,
            )
            .await
            .map_err(sink_error)
    }
}

/// The kubelet's recorder, as this node.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    node: Arc<str>,
    recent: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Events {
    pub fn new(api: Api, node: &str) -> Self {
        Self {
            recorder: Recorder::start(Arc::new(ApiSink(api)), Some(node.to_string())),
            node: node.into(),
            recent: Arc::default(),
        }
    }

    /// Events that go nowhere, for tests.
    pub fn discard(node: &str) -> Self {
        Self {
            recorder: Recorder::discard(),
            node: node.into(),
            recent: Arc::default(),
        }
    }

    /// Record unless the same was recorded within [`REPEAT_EVERY`].
    fn record(&self, reference: ObjectReference, t: EventType, reason: &str, message: String) {
        let key = [
            reference.uid.as_deref().unwrap_or_default(),
            reference.field_path.as_deref().unwrap_or_default(),
            reason,
            &message,
        ]
        .join("\0");
        let now = Instant::now();
        {
            let mut recent = self.recent.lock().expect("recent events");
            if recent
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < REPEAT_EVERY)
            {
                return;
            }
            if recent.len() >= RECENT_MAX {
                recent.retain(|_, t| now.duration_since(*t) < REPEAT_EVERY);
                if recent.len() >= RECENT_MAX {
                    recent.clear();
                }
            }
            recent.insert(key, now);
        }
        self.recorder
            .record(COMPONENT, reference, t, reason, message);
    }

    /// An event about `pod`.
    pub fn pod(&self, pod: &Pod, t: EventType, reason: &str, message: impl Into<String>) {
        self.record(pod_ref(pod, None), t, reason, message.into());
    }

    /// An event about one of `pod`'s containers (`spec.containers{c}`, or
    /// `spec.initContainers{c}` for an init container).
    pub fn container(
        &self,
        pod: &Pod,
        container: &str,
        t: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let spec = pod.spec.as_ref();
        let init = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == container));
        let ephemeral = spec
            .and_then(|s| s.ephemeral_containers.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == container));
        let list = match (init, ephemeral) {
            (true, _) => "initContainers",
            (_, true) => "ephemeralContainers",
            _ => "containers",
        };
        let path = format!("spec.{list}{{{container}}}");
        self.record(pod_ref(pod, Some(path)), t, reason, message.into());
    }

    /// An event about this node: upstream's kubelet names it by its name,
    /// which it also gives as the uid, with no apiVersion.
    pub fn node(&self, t: EventType, reason: &str, message: impl Into<String>) {
        let reference = ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.node.to_string()),
            uid: Some(self.node.to_string()),
            ..Default::default()
        };
        self.record(reference, t, reason, message.into());
    }

    /// `Node <name> status is now: <what>`, as upstream's node status events read.
    pub fn node_status(&self, t: EventType, what: &str) {
        self.node(t, what, format!("Node {} status is now: {what}", self.node));
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }
}

/// A reference to `pod` (and one of its containers).
fn pod_ref(pod: &Pod, field_path: Option<String>) -> ObjectReference {
    let m = &pod.metadata;
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        field_path,
    }
}

/// Upstream's `format.Pod`: `name_namespace(uid)`.
pub fn pod_id(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}_{}({})",
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    )
}
