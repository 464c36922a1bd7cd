//! `?watch=true`: a chunked stream of `{"type": ..., "object": ...}` lines.
//!
//! Empty or `0` resourceVersion: current objects as ADDED, then changes.
//! A compacted resourceVersion: one ERROR event with a 410 Expired Status,
//! which tells clients to list again. Bookmarks on request; the stream ends
//! after `timeoutSeconds`. With a label or field selector, an object that
//! stops matching is sent as DELETED and one that starts matching as ADDED,
//! as upstream's watch cache does.

use super::request::{selectors, Target};
use super::table;
use crate::apiserver::state::ApiState;
use crate::datastore::objects::prefix;
use crate::datastore::{DatastoreError, EventKind, Watch};
use crate::registry::error::KubeError;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
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
    /// With selectors: keys of the objects the client holds as matching.
    matching: Option<HashSet<String>>,
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
            serde_json::to_value(table::table(&self.t.rt, &[obj], &rv)).unwrap_or_default()
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
    line(&json!({"type": "ERROR", "object": super::status::Status::of(e)}))
}

pub async fn serve(
    sv: Arc<ApiState>,
    t: Target,
    q: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, KubeError> {
    let (labels, fields) = selectors(&t.rt, q)?;
    let filtered = q.get("labelSelector").is_some_and(|s| !s.is_empty())
        || q.get("fieldSelector").is_some_and(|s| !s.is_empty());
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
        matching: None,
        last_rev: 0,
        deadline: tokio::time::Instant::now() + timeout,
        next_bookmark: tokio::time::Instant::now() + BOOKMARK_EVERY,
        done: false,
        t,
    };
    let replay = rv.is_empty() || rv == "0";
    let start: i64 = if replay || filtered {
        let (rev, items) = sv
            .registry
            .list(&state.t.rt, state.t.namespace.as_deref())
            .await?;
        let mut held = HashSet::new();
        for o in items
            .into_iter()
            .filter(|o| state.labels.matches(o) && state.fields.matches(o))
        {
            held.insert(crate::datastore::objects::Ref::of(&storage, &o).key());
            if replay {
                pending.push_back(state.event("ADDED", o));
            }
        }
        if filtered {
            state.matching = Some(held);
        }
        if replay {
            rev
        } else {
            rv.parse()
                .map_err(|_| KubeError::BadRequest(format!("invalid resourceVersion {rv:?}")))?
        }
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
                    let obj = s.t.rt.strategy().storage_to_version(obj);
                    let matches = s.labels.matches(&obj) && s.fields.matches(&obj);
                    let deleted = matches!(ev.kind, EventKind::Delete);
                    let kind = match s.matching.as_mut() {
                        None if !matches => continue,
                        None => match ev.kind {
                            EventKind::Create => "ADDED",
                            EventKind::Update => "MODIFIED",
                            EventKind::Delete => "DELETED",
                        },
                        Some(held) => {
                            let had = if deleted || !matches { held.remove(&ev.key) } else { !held.insert(ev.key.clone()) };
                            // The held set is today's; a delete of an object that matched
                            // when the client listed it must still reach the client.
                            let had = had || (deleted && matches);
                            match (had, matches && !deleted) {
                                (true, true) => "MODIFIED",
                                (false, true) => "ADDED",
                                (true, false) => "DELETED",
                                (false, false) => continue,
                            }
                        }
                    };
                    let b = s.event(kind, obj);
                    return Some((Ok(b), s));
                }
            }
        }
    }
}
