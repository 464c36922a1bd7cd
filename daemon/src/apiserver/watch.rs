//! `?watch=true`: a chunked stream of `{"type": ..., "object": ...}` lines.
//!
//! Empty or `0` resourceVersion: current objects as ADDED, then changes.
//! A compacted resourceVersion: one ERROR event with a 410 Expired Status,
//! which tells clients to list again. Bookmarks on request; the stream ends
//! after `timeoutSeconds`.

use super::handlers::{selectors, Target};
use super::status::KubeError;
use super::table;
use crate::datastore::{DatastoreError, EventKind, Watch};
use crate::objects::prefix;
use crate::server::Supervisor;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

struct State {
    watch: Option<Watch>,
    pending: VecDeque<Bytes>,
    t: Target,
    labels: super::selectors::LabelSelector,
    fields: super::selectors::FieldSelector,
    as_table: bool,
    bookmarks: bool,
    last_rev: i64,
    deadline: tokio::time::Instant,
    next_bookmark: tokio::time::Instant,
    done: bool,
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

impl State {
    fn event(&self, kind: &str, obj: Value) -> Bytes {
        let object = if self.as_table {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            table::table(&self.t.rt, &[obj], &rv)
        } else {
            obj
        };
        line(&json!({"type": kind, "object": object}))
    }

    fn bookmark(&self) -> Bytes {
        line(&json!({"type": "BOOKMARK", "object": {
            "kind": self.t.rt.kind, "apiVersion": self.t.rt.api_version(),
            "metadata": {"resourceVersion": self.last_rev.to_string()}}}))
    }
}

fn error_event(e: &KubeError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.status_object()}))
}

pub async fn serve(
    sv: Arc<Supervisor>,
    t: Target,
    q: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, KubeError> {
    let (labels, fields) = selectors(q)?;
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let storage = t.rt.storage();
    let watch_prefix = prefix(&storage, t.namespace.as_deref());
    let mut pending = VecDeque::new();
    let mut state = State {
        watch: None,
        pending: VecDeque::new(),
        labels,
        fields,
        as_table,
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        last_rev: 0,
        deadline: tokio::time::Instant::now() + timeout,
        next_bookmark: tokio::time::Instant::now() + BOOKMARK_EVERY,
        done: false,
        t,
    };
    let start: i64 = if rv.is_empty() || rv == "0" {
        let (rev, items) = sv
            .objects
            .list(&storage, state.t.namespace.as_deref())
            .await
            .map_err(|e| KubeError::from_store(e, state.t.subject("")))?;
        for o in items
            .into_iter()
            .filter(|o| state.labels.matches(o) && state.fields.matches(o))
        {
            pending.push_back(state.event("ADDED", o));
        }
        rev
    } else {
        rv.parse()
            .map_err(|_| KubeError::BadRequest(format!("invalid resourceVersion {rv:?}")))?
    };
    state.last_rev = start;
    match sv.objects.store.watch(&watch_prefix, start).await {
        Ok(w) => state.watch = Some(w),
        Err(DatastoreError::Compacted {
            requested,
            compacted,
        }) => {
            pending.push_back(error_event(&KubeError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            ))));
            state.done = true;
        }
        Err(e) => return Err(KubeError::Unavailable(e.to_string())),
    }
    state.pending = pending;
    let stream = futures_util::stream::unfold(state, next_chunk);
    let ctype = if as_table {
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    } else {
        "application/json"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn next_chunk(mut s: State) -> Option<(Result<Bytes, std::convert::Infallible>, State)> {
    loop {
        if let Some(b) = s.pending.pop_front() {
            return Some((Ok(b), s));
        }
        if s.done {
            return None;
        }
        let watch = s.watch.as_mut()?;
        let bookmark_at = if s.bookmarks {
            s.next_bookmark
        } else {
            s.deadline
        };
        tokio::select! {
            _ = tokio::time::sleep_until(s.deadline) => return None,
            _ = tokio::time::sleep_until(bookmark_at), if s.bookmarks => {
                s.next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
                let b = s.bookmark();
                return Some((Ok(b), s));
            }
            ev = watch.next() => match ev {
                None => return None,
                Some(Err(DatastoreError::Compacted { requested, compacted })) => {
                    s.done = true;
                    s.pending.push_back(error_event(&KubeError::Expired(format!("too old resource version: {requested} ({compacted})"))));
                }
                Some(Err(e)) => {
                    s.done = true;
                    s.pending.push_back(error_event(&KubeError::Internal(e.to_string())));
                }
                Some(Ok(ev)) => {
                    s.last_rev = ev.revision;
                    let Ok(mut obj) = serde_json::from_slice::<Value>(&ev.value) else { continue };
                    obj["metadata"]["resourceVersion"] = json!(ev.revision.to_string());
                    if !(s.labels.matches(&obj) && s.fields.matches(&obj)) {
                        continue;
                    }
                    let kind = match ev.kind {
                        EventKind::Create => "ADDED",
                        EventKind::Update => "MODIFIED",
                        EventKind::Delete => "DELETED",
                    };
                    let b = s.event(kind, obj);
                    return Some((Ok(b), s));
                }
            }
        }
    }
}
