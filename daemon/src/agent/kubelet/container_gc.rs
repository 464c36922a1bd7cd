//! Dead containers, kept as upstream's container GC keeps them (its
//! defaults: `MaxPerPodContainer` 1, no minimum age): per pod and container
//! name, the newest exited container stays, since its status is the
//! container's `lastState` and its log what `kubectl logs --previous`
//! reads; older exited ones are removed with their log files. Without it,
//! each restart of a crash-looping container left a container, its
//! writable layer and its log behind for as long as the pod lived.
//!
//! Runs once a second on the listing the syncs of that second share, so
//! it costs no runtime call unless there is something to remove. Containers of pods
//! that are gone go with their sandboxes (the pod loop's orphan removal).

use super::listing::{Listing, LABEL_CONTAINER, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};
use super::node::NodeCtx;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use std::collections::HashMap;

fn label<'a>(c: &'a cri::Container, key: &str) -> &'a str {
    c.labels.get(key).map_or("", String::as_str)
}

fn attempt(c: &cri::Container) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

/// The exited containers to remove: all but the newest exited one of each
/// pod and container name. Running (or created) containers are never
/// picked.
pub fn dead<'a>(
    containers: impl IntoIterator<Item = &'a cri::Container>,
) -> Vec<&'a cri::Container> {
    let mut by_name: HashMap<(&str, &str), Vec<&cri::Container>> = HashMap::new();
    for c in containers {
        if c.state == cri::ContainerState::ContainerExited as i32 {
            by_name
                .entry((label(c, LABEL_UID), label(c, LABEL_CONTAINER)))
                .or_default()
                .push(c);
        }
    }
    let mut out = Vec::new();
    for (_, mut exited) in by_name {
        exited.sort_by(|a, b| {
            attempt(b)
                .cmp(&attempt(a))
                .then(b.created_at.cmp(&a.created_at))
        });
        out.extend(exited.into_iter().skip(1));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Remove what [`dead`] picks from `listing`, and each one's log files
/// (`<attempt>.log` and its rotated copies).
pub async fn collect(cri_: &Cri, node: &NodeCtx, listing: &Listing) {
    for c in dead(listing.containers()) {
        let r = cri_
            .remove_container(cri::RemoveContainerRequest {
                container_id: c.id.clone(),
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(container = %c.id, error = %e.message(), "dead container not removed; trying again next pass");
            continue;
        }
        let dir = node
            .log_dir(
                label(c, LABEL_NAMESPACE),
                label(c, LABEL_NAME),
                label(c, LABEL_UID),
            )
            .join(label(c, LABEL_CONTAINER));
        let log = format!("{}.log", attempt(c));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name == log || name.starts_with(&format!("{log}.")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        tracing::debug!(container = %c.id, pod = label(c, LABEL_NAME), "removed a dead container");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(
        id: &str,
        uid: &str,
        name: &str,
        attempt: u32,
        state: cri::ContainerState,
    ) -> cri::Container {
        cri::Container {
            id: id.into(),
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: state as i32,
            created_at: i64::from(attempt),
            labels: [(LABEL_UID, uid), (LABEL_CONTAINER, name)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_exited_container_of_each_name_stays() {
        use cri::ContainerState::{ContainerCreated, ContainerExited, ContainerRunning};
        let all = [
            // A crash loop: attempts 0..3 exited, 4 running.
            c("a0", "p1", "app", 0, ContainerExited),
            c("a1", "p1", "app", 1, ContainerExited),
            c("a3", "p1", "app", 3, ContainerExited),
            c("a2", "p1", "app", 2, ContainerExited),
            c("a4", "p1", "app", 4, ContainerRunning),
            // Another container of the same pod with one exited: kept.
            c("i0", "p1", "init", 0, ContainerExited),
            // The same name in another pod is counted apart.
            c("b0", "p2", "app", 0, ContainerExited),
            c("b1", "p2", "app", 1, ContainerExited),
            // Never a container that is not exited.
            c("n0", "p3", "app", 0, ContainerCreated),
            c("n1", "p3", "app", 1, ContainerRunning),
        ];
        let ids: Vec<&str> = dead(&all).iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a0", "a1", "a2", "b0"]);
    }
}
