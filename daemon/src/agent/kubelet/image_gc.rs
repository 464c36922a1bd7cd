//! Image garbage collection, as upstream's image GC manager does it.
//!
//! Every `image-gc-period` (upstream's fixed 5 minutes) the kubelet looks
//! at the filesystem the runtime keeps images on (CRI `ImageFsInfo`'s
//! mount point). Once it is `image-gc-high-threshold` (85 %) full, images
//! are removed until it is back to `image-gc-low-threshold` (80 %): the
//! least recently used first, and never
//! - an image a container uses, running or exited;
//! - a pinned image: the air-gap images and the pause image, which the
//!   importer labels `io.cri-containerd.pinned=pinned` as K3s does
//!   (containerd 1.6's CRI does not report the label, so it is read with
//!   `ctr`; newer runtimes' `pinned` flag counts too);
//! - an image first seen less than `image-minimum-gc-age` (2m) ago.
//!
//! Not finding enough to remove leaves upstream's `FreeDiskSpaceFailed`
//! warning on the Node, and `ImageGCFailed` when that repeats. Under disk
//! pressure the eviction loop first removes every image these rules allow
//! (upstream's node-level reclaim) and evicts a pod only if that was not
//! enough.

use super::settings::Settings;
use crate::agent::runtime::cri::Cri;
use crate::agent::runtime::images::PAUSE_IMAGE;
use k8s_cri::v1 as cri;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the collector knows of an image between passes.
#[derive(Debug, Clone, Copy)]
struct Record {
    first_detected: Instant,
    /// When a container last used it; `None`: not since it was detected.
    last_used: Option<Instant>,
}

/// An image that may be removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub size: u64,
    pub first_detected: Instant,
    pub last_used: Option<Instant>,
}

/// Upstream's order: never used, then least recently used, then the
/// oldest detected.
pub fn order(c: &mut [Candidate]) {
    c.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then(a.first_detected.cmp(&b.first_detected))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// The images to remove, in order, to free `want` bytes at `now`: those
/// detected at least `min_age` ago, until enough is found.
pub fn pick(ordered: &[Candidate], want: u64, now: Instant, min_age: Duration) -> Vec<&Candidate> {
    let mut out = Vec::new();
    let mut found = 0u64;
    for c in ordered {
        if found >= want {
            break;
        }
        if now.saturating_duration_since(c.first_detected) < min_age {
            continue;
        }
        found += c.size;
        out.push(c);
    }
    out
}

/// Bytes to remove so a filesystem of `capacity` with `available` left
/// gets back to `low` percent used, when it is at least `high` percent
/// used (upstream's arithmetic, in whole percents); `None` below `high`.
pub fn to_free(capacity: u64, available: u64, high: u8, low: u8) -> Option<u64> {
    if capacity == 0 || high >= 100 {
        return None;
    }
    let available = available.min(capacity);
    let used_pct = 100 - (available as u128 * 100 / capacity as u128) as u64;
    (used_pct >= u64::from(high)).then(|| {
        let target = (capacity as u128 * u128::from(100 - low) / 100) as u64;
        target.saturating_sub(available)
    })
}

pub struct ImageGc {
    cri: Cri,
    /// The runtime's socket, for `ctr` (the pinned label).
    socket: PathBuf,
    /// Held from listing to the last removal, so that no image is seen
    /// between its import and its pin.
    imports: crate::agent::runtime::images::Imports,
    high: u8,
    low: u8,
    min_age: Duration,
    records: Mutex<HashMap<String, Record>>,
    /// Whether a detection ran yet.
    looked: AtomicBool,
}

impl ImageGc {
    pub fn new(
        cri: Cri,
        socket: PathBuf,
        imports: crate::agent::runtime::images::Imports,
        s: &Settings,
    ) -> Self {
        ImageGc {
            cri,
            socket,
            imports,
            high: s.image_gc_high,
            low: s.image_gc_low,
            min_age: s.image_min_age,
            records: Mutex::default(),
            looked: AtomicBool::new(false),
        }
    }

    /// Names of pinned images: the label, read with `ctr`, and the pause
    /// image (rk3s's, and whatever the runtime's config names, as a user's
    /// containerd template may), which every sandbox needs whatever a
    /// runtime reports; sandboxes are not containers, so nothing else
    /// keeps it. Not knowing which images are pinned is an error: nothing
    /// is removed.
    async fn pinned_names(&self) -> Result<HashSet<String>, String> {
        let mut names: HashSet<String> = HashSet::from([PAUSE_IMAGE.to_string()]);
        names.extend(self.cri.sandbox_image().await);
        let ctr = crate::agent::runtime::containerd::which("ctr")
            .ok_or("ctr (package containerd) is not on PATH: pinned images cannot be told apart")?;
        let pinned = crate::agent::runtime::images::pinned(&ctr, &self.socket)
            .await
            .map_err(|e| format!("reading pinned images: {e}"))?;
        names.extend(pinned);
        Ok(names)
    }

    /// List images and containers, refresh what is known of each image,
    /// and return those that may be removed, in removal order.
    async fn detect(&self, now: Instant) -> Result<Vec<Candidate>, String> {
        let e = |s: tonic::Status| s.message().to_string();
        let images = self
            .cri
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .map_err(e)?
            .images;
        let containers = self
            .cri
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .map_err(e)?
            .containers;
        let used: HashSet<String> = containers
            .iter()
            .flat_map(|c| {
                let spec = c.image.as_ref().map(|i| i.image.clone());
                spec.into_iter().chain([c.image_ref.clone()])
            })
            .collect();
        let pinned = self.pinned_names().await?;
        let mut records = self.records.lock().expect("image records");
        // Images there before the first look have an unknown age: old
        // enough (upstream's first detection dates them in the past).
        let first_look = !self.looked.swap(true, Ordering::Relaxed);
        let detected = if first_look {
            now.checked_sub(self.min_age).unwrap_or(now)
        } else {
            now
        };
        records.retain(|id, _| images.iter().any(|i| &i.id == id));
        let mut out = Vec::new();
        for i in &images {
            let names = || {
                std::iter::once(&i.id)
                    .chain(&i.repo_tags)
                    .chain(&i.repo_digests)
            };
            let r = records.entry(i.id.clone()).or_insert(Record {
                first_detected: detected,
                last_used: None,
            });
            if names().any(|n| used.contains(n)) {
                r.last_used = Some(now);
                continue;
            }
            if i.pinned || names().any(|n| pinned.contains(n)) {
                continue;
            }
            out.push(Candidate {
                id: i.id.clone(),
                size: i.size,
                first_detected: r.first_detected,
                last_used: r.last_used,
            });
        }
        order(&mut out);
        Ok(out)
    }

    /// Remove unused images until `want` bytes are freed: what was freed,
    /// and the removals that failed (the others still count). An error
    /// only when the runtime could not be asked.
    async fn free(&self, want: u64) -> Result<(u64, Option<String>), String> {
        let _held = self.imports.hold().await;
        let now = Instant::now();
        let candidates = self.detect(now).await?;
        let mut freed = 0;
        let mut errors = Vec::new();
        for c in pick(&candidates, want, now, self.min_age) {
            let r = self
                .cri
                .remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: c.id.clone(),
                        ..Default::default()
                    }),
                })
                .await;
            match r {
                Ok(_) => {
                    tracing::info!(image = %c.id, size = c.size, "image GC: removed an unused image");
                    freed += c.size;
                }
                Err(s) => errors.push(format!("{}: {}", c.id, s.message())),
            }
        }
        let failed = (!errors.is_empty()).then(|| {
            format!(
                "wanted to free {want} bytes, but freed {freed} bytes space with errors in image deletion: {}",
                errors.join("; ")
            )
        });
        Ok((freed, failed))
    }

    /// Every unused image the rules allow (the eviction loop's reclaim):
    /// the bytes freed, failures logged.
    pub async fn delete_unused(&self) -> Result<u64, String> {
        let (freed, failed) = self.free(u64::MAX).await?;
        if let Some(e) = failed {
            tracing::warn!(error = %e, "removing unused images under disk pressure");
        }
        Ok(freed)
    }

    /// Capacity and available bytes of the image filesystem.
    async fn image_fs(&self) -> Result<(u64, u64), String> {
        let info = self
            .cri
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .map_err(|s| s.message().to_string())?;
        let mount = info
            .image_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|id| PathBuf::from(&id.mountpoint))
            .ok_or("the runtime reports no image filesystem")?;
        let f = super::node_status::fs_stats(&mount)
            .ok_or_else(|| format!("cannot stat the image filesystem {}", mount.display()))?;
        Ok((f.total, f.available))
    }

    /// One pass: free down to the low threshold when over the high one.
    /// Not finding enough is an error, as upstream's.
    pub async fn collect(&self) -> Result<Option<u64>, GcError> {
        let (capacity, available) = self.image_fs().await.map_err(GcError::Runtime)?;
        if capacity == 0 {
            return Err(GcError::Runtime(
                "invalid capacity 0 on image filesystem".into(),
            ));
        }
        let Some(want) = to_free(capacity, available, self.high, self.low) else {
            // Still refresh first-detected and last-used times.
            self.detect(Instant::now())
                .await
                .map_err(GcError::Runtime)?;
            return Ok(None);
        };
        tracing::info!(
            want,
            high = self.high,
            low = self.low,
            "image filesystem over the high threshold; removing unused images down to the low threshold"
        );
        let (freed, failed) = self.free(want).await.map_err(GcError::Runtime)?;
        if let Some(e) = failed {
            return Err(GcError::Runtime(e));
        }
        if freed < want {
            return Err(GcError::NotEnough(format!(
                "Failed to garbage collect required amount of images. Attempted to free {want} bytes, but only found {freed} bytes eligible to free."
            )));
        }
        Ok(Some(freed))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    NotEnough(String),
}

/// The GC loop: a pass every `period` until `cancel`. High threshold 100
/// turns it off, as upstream's.
pub async fn run(
    gc: std::sync::Arc<ImageGc>,
    events: super::events::Events,
    period: Duration,
    cancel: CancellationToken,
) {
    if gc.high >= 100 {
        tracing::info!("image GC is off (image-gc-high-threshold=100)");
        return;
    }
    let mut failed_before = false;
    let mut first = true;
    loop {
        // The first pass at once, as upstream's: a node restarted on a
        // full disk need not wait a period.
        let wait = if first { Duration::ZERO } else { period };
        first = false;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match gc.collect().await {
            Ok(_) => failed_before = false,
            Err(e) => {
                if let GcError::NotEnough(m) = &e {
                    events.node(super::events::Warning, "FreeDiskSpaceFailed", m);
                }
                if failed_before {
                    tracing::warn!(error = %e, "image garbage collection failed multiple times in a row");
                    events.node(super::events::Warning, "ImageGCFailed", e.to_string());
                } else {
                    tracing::warn!(error = %e, "image garbage collection failed");
                }
                failed_before = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, size: u64, detected_ago: u64, used_ago: Option<u64>, now: Instant) -> Candidate {
        Candidate {
            id: id.into(),
            size,
            first_detected: now - Duration::from_secs(detected_ago),
            last_used: used_ago.map(|a| now - Duration::from_secs(a)),
        }
    }

    #[test]
    fn never_used_go_first_then_least_recently_used() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let mut v = vec![
            c("recent", 1, 900, Some(10), now),
            c("old-use", 1, 900, Some(800), now),
            c("never-late", 1, 300, None, now),
            c("never-early", 1, 900, None, now),
        ];
        order(&mut v);
        let ids: Vec<&str> = v.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["never-early", "never-late", "old-use", "recent"]);
    }

    #[test]
    fn pick_stops_once_enough_and_skips_young_images() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let v = vec![
            c("young", 100, 30, None, now),
            c("a", 40, 600, None, now),
            c("b", 40, 600, Some(200), now),
            c("c", 40, 600, Some(100), now),
        ];
        let ids = |want| -> Vec<String> {
            pick(&v, want, now, Duration::from_secs(120))
                .iter()
                .map(|c| c.id.clone())
                .collect()
        };
        assert_eq!(ids(50), ["a", "b"]);
        assert_eq!(ids(40), ["a"]);
        assert_eq!(ids(0), Vec::<String>::new());
        // Not enough: everything old enough, the young one kept.
        assert_eq!(ids(1000), ["a", "b", "c"]);
        // With no minimum age the young one goes first.
        let all: Vec<&str> = pick(&v, 100, now, Duration::ZERO)
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(all, ["young"]);
    }

    #[test]
    fn thresholds_are_upstreams_arithmetic() {
        // 1000 bytes, 100 left: 90 % used, over 85; back to 80 % is 200 left.
        assert_eq!(to_free(1000, 100, 85, 80), Some(100));
        // Exactly at the high threshold counts.
        assert_eq!(to_free(1000, 150, 85, 80), Some(50));
        // Whole percents, rounded as upstream's: 15.9 % left is 85 % used.
        assert_eq!(to_free(1000, 159, 85, 80), Some(41));
        assert_eq!(to_free(1000, 160, 85, 80), None);
        // 100 turns GC off; an empty capacity is not divided by.
        assert_eq!(to_free(1000, 0, 100, 80), None);
        assert_eq!(to_free(0, 0, 85, 80), None);
        // Available above capacity (a racing statfs) is capped.
        assert_eq!(to_free(1000, 5000, 0, 0), Some(0));
    }
}
